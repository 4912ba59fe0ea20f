"""Convert ADE20K's SceneParsing labels to Detectron2's layout (``annotations_detectron2``).

    python datasets/prepare_ade20k_sem_seg.py                  # $DETECTRON2_DATASETS or datasets/
    python datasets/prepare_ade20k_sem_seg.py --root /data/datasets

ADEChallengeData2016/annotations/{training,validation}/*.png hold 0 for "other" and 1-150 for the
classes. Training and evaluation use 0-149 with 255 = ignore (what mmseg's ``reduce_zero_label``
does on the fly and Detectron2's own preparation script writes): each label is shifted by -1 and
0 becomes 255, into ADEChallengeData2016/annotations_detectron2/{training,validation}. Files already
converted are skipped, so an interrupted run can be resumed.
"""
import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Tuple

import numpy as np
from PIL import Image

SPLITS = ("training", "validation")


def convert(src: str, dst: str) -> None:
    """Write ``src``'s labels minus 1 (0 -> 255) to ``dst`` as an 8-bit PNG, atomically."""
    labels = np.asarray(Image.open(src))
    if labels.ndim != 2 or labels.max(initial=0) > 150:
        raise ValueError(f"{src}: not an ADE20K SceneParsing label map (2-D, values 0-150); got shape "
                         f"{labels.shape}, max {labels.max(initial=0)}")
    tmp = dst + ".tmp.png"
    Image.fromarray((labels.astype(np.int32) - 1).astype(np.uint8), "L").save(tmp)  # 0 - 1 wraps to 255
    os.replace(tmp, dst)


def convert_split(root: str, split: str, workers: int) -> Tuple[int, int]:
    """Convert one split; returns (files converted, files already there)."""
    src_dir = os.path.join(root, "annotations", split)
    dst_dir = os.path.join(root, "annotations_detectron2", split)
    if not os.path.isdir(src_dir):
        raise SystemExit(f"{src_dir} not found: unzip ADEChallengeData2016.zip under the dataset root first")
    os.makedirs(dst_dir, exist_ok=True)
    todo = [f for f in sorted(os.listdir(src_dir)) if f.endswith(".png") and not os.path.isfile(os.path.join(dst_dir, f))]
    total = sum(1 for f in os.listdir(src_dir) if f.endswith(".png"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda f: convert(os.path.join(src_dir, f), os.path.join(dst_dir, f)), todo))
    return len(todo), total - len(todo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                        help="folder holding ADEChallengeData2016 (default: $DETECTRON2_DATASETS, else datasets)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = os.path.join(args.root, "ADEChallengeData2016")
    start = time.perf_counter()
    for split in SPLITS:
        done, skipped = convert_split(root, split, args.workers)
        print(f"{split}: {done} label maps converted, {skipped} already there")
    print(f"ADE20K labels ready in {os.path.join(root, 'annotations_detectron2')} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
