#!/usr/bin/env python
"""DenseCLIP demo (Detectron2's demo/demo.py for this project): draw the detections of images, a
video or the webcam, with an optional open vocabulary (names or a preset such as "coco") and, for
images, the pixel-text score maps.

    python demo.py --config-file configs/COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml \
        --input a.jpg photos/ "more/*.jpg" --output out/ \
        --vocabulary "cat,remote control,sofa" --score-maps --opts MODEL.WEIGHTS model_final.pth
    python demo.py --config-file CFG --video-input clip.mp4 --output clip_detections.mp4 --vocabulary coco
    python demo.py --config-file CFG --webcam           # shown in a window; ESC quits

Writes out/<stem>.jpg per image (--output x.jpg with one image: that file) and, with --score-maps,
out/<stem>_scoremap_<class>.jpg; without --output the results are shown in a window. The command
line is denseclip.demo_cli, the predictor denseclip.predictor, the drawing denseclip.visualization.
"""
import sys


def main(argv=None) -> int:
    from detectron2.utils.logger import setup_logger

    from denseclip.demo_cli import DemoError, get_parser, run_demo

    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()  # detectron2
    setup_logger(name="denseclip", abbrev_name="denseclip")
    try:
        return run_demo(args).exit_code
    # bad config, --opts, vocabulary, weights, input, no onnxruntime for --onnx: the message, no traceback
    except (DemoError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
