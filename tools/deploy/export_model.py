#!/usr/bin/env python
"""Export a DenseCLIP model (Detectron2's tools/deploy/export_model.py, for this project).

    python tools/deploy/export_model.py --config-file configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml \
        --output export/retinanet --format onnx MODEL.WEIGHTS model_final.pth
    python tools/deploy/export_model.py --config-file configs/COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml \
        --output export/mask_rcnn_lvis --format torch.export --vocabulary lvis MODEL.WEIGHTS model_final.pth

Writes to --output model.onnx (--format onnx: one graph from pixels to detections / segmentation
logits, which tools/deploy/onnx_infer.py runs with ONNX Runtime, NumPy and Pillow only) or one graph
file per exported part (model, and for R-CNN box_head and mask_head: .pt2 for torch.export, .ts for
traced TorchScript, with post-processing in denseclip.deploy's runner), config.yaml and
denseclip_export.json (class names, graphs, their inputs and outputs, test-time settings). The vocabulary's text
embeddings are constants of the graphs: the CLIP text tower is not exported, except for pre-model
prompting (MODEL.DENSECLIP.PROMPTING pre, --format onnx only), whose text depends on the image. Run the export with
``demo.py --onnx DIR``, ``train_net.py --eval-only --onnx DIR`` or ``denseclip.deploy.ExportedModel``.
--format torchscript traces the graphs (TorchScript is deprecated by PyTorch).
With --sample-image, the export is run on that image next to the PyTorch model and the largest
differences are printed.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "projects" / "DenseCLIP"))

FORMATS = ("onnx", "torch.export", "torchscript")
PROGRAM = "export_model.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the exported files (created if needed)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (one graph, pixels to outputs; needs the deploy extra), torch.export (.pt2) or torchscript "
                        "(traced; deprecated by PyTorch). Default: onnx")
    parser.add_argument("--vocabulary", default=None,
                        help='language-guided configs: comma-separated class names or a preset ("coco", "lvis", ...) '
                        "baked into the export; default: the model's training vocabulary")
    parser.add_argument("--sample-image", metavar="FILE", help="compare the export with the PyTorch model on this image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs")
    return parser


def check_output_folder(output: str) -> None:
    """Fail (one line) unless ``output`` is a folder that can be created and written: checked before the
    model is built, so that a typo costs seconds, not an export."""
    import tempfile

    from denseclip.cli_errors import fail

    if os.path.exists(output) and not os.path.isdir(output):
        fail(PROGRAM, f"--output '{output}' is a file: give a folder for the exported files (e.g. {output}_export)")
    try:
        os.makedirs(output, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as e:
        fail(PROGRAM, f"--output '{output}' cannot be written ({e.strerror}): give a folder you can write to")


def check_sample_image(path: str) -> None:
    """Fail (one line) unless --sample-image is a readable image: found before anything is exported."""
    from denseclip.cli_errors import fail
    from denseclip.data.mapper import BadImageError, read_image_robust

    try:
        read_image_robust(path, format="BGR")
    except BadImageError as e:
        fail(PROGRAM, f"--sample-image '{path}' cannot be used: {e.reason}")


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger()
    logger = setup_logger(name="denseclip", abbrev_name="denseclip")

    from denseclip.cli_errors import one_line_errors
    from denseclip.config_building import ConfigError
    from denseclip.demo_cli import setup_cfg
    from denseclip.deploy import ExportedPredictor, export_model
    from denseclip.deploy.parity import compare_predictions
    from denseclip.predictor import DenseCLIPPredictor

    if args.sample_image:
        check_sample_image(args.sample_image)
    check_output_folder(args.output)
    with one_line_errors(PROGRAM, ConfigError, ValueError, FileNotFoundError, ImportError):
        cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, cpu=True))
        predictor = DenseCLIPPredictor(cfg, vocabulary=args.vocabulary)
        manifest = export_model(predictor.model, predictor.cfg, args.output, args.format)
    files = ", ".join(g["file"] for g in manifest["graphs"].values())
    logger.info("Exported %s (%d classes) to %s: %s", manifest["meta_architecture"], len(manifest["class_names"]), args.output, files)
    if args.sample_image:
        from detectron2.data.detection_utils import read_image

        image = read_image(args.sample_image, format="BGR")
        exported = ExportedPredictor(args.output)
        report = compare_predictions(predictor(image), exported(image))
        logger.info("PyTorch vs export on %s: %s", args.sample_image, report)
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
