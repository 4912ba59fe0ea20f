#!/usr/bin/env python
"""Convert a checkpoint of the DenseCLIP authors (raoyongming/DenseCLIP: detectors, mmdetection; Semantic
FPN models, mmseg) to this project's Detectron2 layout.

    python tools/convert_reference_checkpoint.py retinanet_denseclip_r50.pth output/retinanet_denseclip_R50.pth
    python tools/convert_reference_checkpoint.py denseclip_fpn_res50.pth output/semantic_fpn_denseclip_R50.pth

The output holds ``{"model": state_dict, "vocabulary": [the checkpoint's CLASSES]}`` and is loaded with
``MODEL.WEIGHTS`` under the paper config of the same model (configs/COCO/*_{denseclip,clip}_R{50,101}_FPN_1x.yaml,
configs/ADE20K/semantic_fpn_{denseclip,clip}_*.yaml).
``MODEL.WEIGHTS`` also accepts the reference file directly: the checkpointer converts it on load.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "projects" / "DenseCLIP"))

from denseclip.reference_checkpoint import (  # noqa: E402
    convert_reference_state_dict,
    detect_reference_layout,
    is_reference_checkpoint,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the reference checkpoint (.pth: state_dict + meta)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    args = parser.parse_args()
    # weights_only: a checkpoint from the internet must not run code; reference checkpoints hold
    # only tensors and plain meta data.
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=True)
    if not is_reference_checkpoint(checkpoint):
        sys.exit(f"{args.source}: not an mmdetection / mmseg checkpoint (expected the keys 'state_dict' and 'meta')")
    layout = detect_reference_layout(checkpoint["state_dict"])
    converted = {"model": convert_reference_state_dict(checkpoint["state_dict"])}
    classes = checkpoint["meta"].get("CLASSES") if isinstance(checkpoint["meta"], dict) else None
    if classes:
        converted["vocabulary"] = list(classes)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.output)
    kind = f"{layout.detector}{' ViT' if layout.vit else ''} {'DenseCLIP' if layout.denseclip else 'CLIP baseline'}"
    print(f"{args.source}: {kind}, {len(converted['model'])} tensors -> {args.output}")


if __name__ == "__main__":
    main()
