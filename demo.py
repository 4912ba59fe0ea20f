#!/usr/bin/env python
"""DenseCLIP demo (Detectron2's demo/demo.py for this project): draw the detections of images, with
an optional open vocabulary and the pixel-text score maps.

    python demo.py --config-file configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml \
        --input a.jpg photos/ "more/*.jpg" --output out/ \
        --vocabulary "cat,remote control,sofa" --score-maps --opts MODEL.WEIGHTS model_final.pth

Writes out/<stem>.jpg per image and, with --score-maps, out/<stem>_scoremap_<class>.jpg. The logic
lives in denseclip.predictor (DenseCLIPPredictor, run_demo).
"""
import sys


def main(argv=None) -> int:
    from detectron2.utils.logger import setup_logger

    from denseclip.predictor import get_parser, run_demo

    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()  # detectron2
    setup_logger(name="denseclip", abbrev_name="denseclip")
    try:
        return run_demo(args).exit_code
    except (ValueError, FileNotFoundError) as e:  # bad config, vocabulary or weights: no traceback
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
