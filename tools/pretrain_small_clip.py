#!/usr/bin/env python
"""Pretrain the small CLIP (open_clip's RN-tiny: ResNet image tower, 2-layer text tower) on the
synthetic image-caption pairs, once: a checkpoint with the same settings is reused. Ends with its
zero-shot accuracy on held-out single-object crops of the 64 colour-shape classes (measured on the
checkpoint file in both cases). The quickstarts start from the checkpoint:

    python tools/pretrain_small_clip.py                    # -> datasets/small_clip/RN-tiny_shapes.pt
    python train_net.py --config-file configs/Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml \\
        MODEL.CLIP.PRETRAINED datasets/small_clip/RN-tiny_shapes.pt

Settings (and so the cache key): --steps, --num-pairs, --batch-size, --image-size, --lr, --seed.
"""
import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# The library, where the project is not pip-installed.
sys.path.insert(0, str(ROOT / "projects" / "DenseCLIP"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from denseclip.pretraining import DEFAULT_SMALL_CLIP_PATH, SmallCLIPSettings, build_or_reuse_small_clip  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    defaults = SmallCLIPSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=DEFAULT_SMALL_CLIP_PATH, help="checkpoint file (default: %(default)s)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--num-pairs", type=int, default=defaults.num_pairs, help="distinct image-caption pairs")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="pretraining input side (multiple of 32)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--crops-per-class", type=int, default=defaults.crops_per_class,
                   help="held-out crops per class for the zero-shot check")
    p.add_argument("--force", action="store_true", help="pretrain again even if the checkpoint is up to date")
    args = p.parse_args(argv)
    for name in ("steps", "num_pairs", "batch_size", "crops_per_class"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.image_size < 32 or args.image_size % 32:
        p.error(f"--image-size must be a multiple of 32 (the ResNet's stride), got {args.image_size}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = SmallCLIPSettings(
        steps=args.steps, num_pairs=args.num_pairs, batch_size=args.batch_size, image_size=args.image_size,
        lr=args.lr, seed=args.seed, crops_per_class=args.crops_per_class,
    )

    def log(message: str) -> None:
        print(f"[small CLIP] {message}", flush=True)

    cpu_start = time.process_time()
    build = build_or_reuse_small_clip(args.output, settings, log=log, force=args.force)
    # CPU time (all threads) next to the wall time: on a shared machine the wall time says little.
    log(f"{'reused' if build.reused else 'pretrained'} {build.path} in {build.seconds:.0f} s "
        f"(CPU time {time.process_time() - cpu_start:.0f} s, {torch.get_num_threads()} threads)")
    print(build.zero_shot.line(), flush=True)


if __name__ == "__main__":
    main()
