#!/usr/bin/env python
"""Convert a checkpoint of the DenseCLIP authors (raoyongming/DenseCLIP: detectors, mmdetection; Semantic
FPN models, mmseg) to this project's Detectron2 layout.

    python tools/convert_reference_checkpoint.py retinanet_denseclip_r50.pth output/retinanet_denseclip_R50.pth
    python tools/convert_reference_checkpoint.py denseclip_fpn_res50.pth output/semantic_fpn_denseclip_R50.pth

The output holds ``{"model": state_dict, "vocabulary": [the checkpoint's CLASSES]}`` and is loaded with
``MODEL.WEIGHTS`` under the paper config of the same model (configs/COCO/*_{denseclip,clip}_R{50,101}_FPN_1x.yaml,
configs/ADE20K/semantic_fpn_{denseclip,clip}_*.yaml).
``MODEL.WEIGHTS`` also accepts the reference file directly: the checkpointer converts it on load.

Before the output is written, the converted tensors are checked against the model of that paper config
(built on the CPU with random weights, a few seconds): a tensor the checkpoint lacks, or one of another
shape, is an error naming it. Errors are one line (``convert_reference_checkpoint.py: error: ...``,
exit status 2): a missing, empty, truncated or foreign file, a checkpoint of another layout.
"""
import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "projects" / "DenseCLIP"))

PROGRAM = "convert_reference_checkpoint.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the reference checkpoint (.pth: state_dict + meta)")
    parser.add_argument("output", help="where to write the converted checkpoint (an existing file is replaced)")
    parser.add_argument("--config-file", metavar="FILE", default="",
                        help="the config of the checkpoint's model, to check that every tensor is there with its shape; "
                        "default: the paper config of the layout (configs/COCO/*_FPN_1x.yaml, configs/ADE20K/semantic_fpn_*)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="with --config-file (given before SOURCE): config overrides as KEY VALUE pairs after OUTPUT")
    return parser


def paper_model_state(config_file: str, classes, opts=()):
    """The state dict of the model of ``config_file`` and ``opts`` (random weights, CPU), ``classes``
    its vocabulary."""
    from detectron2.modeling import build_model

    from denseclip.engine import build_config

    base = ["MODEL.CLIP.PRETRAINED", ""] + (["MODEL.DENSECLIP.CLASS_NAMES", list(classes)] if classes else [])
    return build_model(build_config(config_file, base + list(opts), device="cpu")).state_dict()


def convert(source: str, output: str, config_file: str = "", opts=()) -> str:
    """Convert ``source`` into ``output`` (written only once every check passed); the summary line."""
    import torch

    from denseclip.engine.checkpoint import atomic_write
    from denseclip.reference_checkpoint import convert_reference_state_dict, detect_reference_layout
    from denseclip.reference_checkpoint_files import (
        check_conversion_is_complete,
        paper_config_file,
        read_reference_checkpoint,
    )

    checkpoint = read_reference_checkpoint(source)
    state_dict = checkpoint["state_dict"]
    layout = detect_reference_layout(state_dict)
    converted = {"model": convert_reference_state_dict(state_dict)}
    classes = checkpoint["meta"].get("CLASSES") if isinstance(checkpoint["meta"], dict) else None
    if classes:
        converted["vocabulary"] = list(classes)
    config_file = config_file or str(REPO_ROOT / "configs" / paper_config_file(layout, state_dict))
    check_conversion_is_complete(converted["model"], paper_model_state(config_file, classes, opts), layout, f"'{source}'")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda f: torch.save(converted, f))
    kind = f"{layout.detector}{' ViT' if layout.vit else ''} {'DenseCLIP' if layout.denseclip else 'CLIP baseline'}"
    return f"{source}: {kind}, {len(converted['model'])} tensors (complete for {Path(config_file).name}) -> {output}"


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    from denseclip.cli_errors import fail, one_line_errors
    from denseclip.engine import ConfigError
    from denseclip.reference_checkpoint import ReferenceCheckpointError

    if args.opts and not args.config_file:
        fail(PROGRAM, f"config overrides {args.opts} need --config-file (the paper configs are used as they are)")
    if Path(args.output).is_dir():
        fail(PROGRAM, f"output '{args.output}' is a folder: give a file name, e.g. {Path(args.output) / 'model.pth'}")
    with one_line_errors(PROGRAM, ReferenceCheckpointError, ConfigError, OSError):  # OSError: writing OUTPUT
        print(convert(args.source, args.output, args.config_file, args.opts))


if __name__ == "__main__":
    main()
