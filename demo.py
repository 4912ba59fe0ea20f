#!/usr/bin/env python
"""DenseCLIP demo (Detectron2's demo/demo.py for this project): draw the detections of images, a
video or the webcam, with an optional open vocabulary (names or a preset such as "coco") and, for
images, the pixel-text score maps.

    python demo.py --config-file configs/COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml \
        --input a.jpg photos/ "more/*.jpg" --output out/ \
        --vocabulary "cat,remote control,sofa" --score-maps --opts MODEL.WEIGHTS model_final.pth
    python demo.py --config-file CFG --video-input clip.mp4 --output clip_detections.mp4 --vocabulary coco
    python demo.py --config-file CFG --webcam           # shown in a window; ESC quits
    python demo.py --web --config-file CFG --port 7860  # local web page (pip install -e ".[web]")

Writes out/<stem>.jpg per image (--output x.jpg with one image: that file) and, with --score-maps,
out/<stem>_scoremap_<class>.jpg; without --output the results are shown in a window. The command
line is denseclip.demo_cli, the predictor denseclip.predictor, the drawing denseclip.visualization;
--web starts the Gradio page of denseclip.web_demo (its own options: demo.py --web --help).
"""
import sys


def main(argv=None) -> int:
    from detectron2.utils.logger import setup_logger

    from denseclip.cli_errors import one_line
    from denseclip.demo_cli import DemoError, get_parser, run_demo
    from denseclip.engine import IncompatibleCheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    web = "--web" in (argv[: argv.index("--opts")] if "--opts" in argv else argv)
    if web:
        argv.remove("--web")
        try:
            from denseclip.web_demo.app import get_parser as get_web_parser
            from denseclip.web_demo.app import serve
        except ImportError as e:
            print(f"demo.py: error: the web demo needs Gradio ({e}): pip install -e \".[web]\"", file=sys.stderr)
            return 2
        args = get_web_parser().parse_args(argv)
    else:
        parser = get_parser()
        parser.epilog = "The local web page (Gradio): python demo.py --web --config-file FILE [--port 7860]; see demo.py --web --help."
        args = parser.parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()  # detectron2
    setup_logger(name="denseclip", abbrev_name="denseclip")
    try:
        return serve(args) if web else run_demo(args).exit_code
    # bad config, --opts, vocabulary, weights, input, no onnxruntime for --onnx: the message, no traceback
    except (DemoError, ValueError, FileNotFoundError, ImportError, IncompatibleCheckpointError) as e:
        print(f"demo.py: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
