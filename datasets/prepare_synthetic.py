"""Generate the synthetic shapes dataset (the project's default, download-free dataset).

    python datasets/prepare_synthetic.py                       # datasets/synthetic_shapes
    python datasets/prepare_synthetic.py --root /data/shapes --num-train 1000 --seed 1

Training generates it on first use anyway; this script is for preparing it ahead of time (e.g.
before a multi-process launch, or on a machine with a shared file system). Does nothing when the
dataset already exists with the same parameters.
"""
import argparse
import logging
import time

from denseclip.data import default_synthetic_root, generate_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        default=None,
        help="output folder (default: $DENSECLIP_SYNTHETIC_ROOT, else datasets/synthetic_shapes)",
    )
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images, in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    paths = generate_synthetic_dataset(
        args.root or default_synthetic_root(), args.num_train, args.num_val, args.image_size, args.seed
    )
    print(f"Synthetic shapes dataset ready in {paths['root']} ({time.perf_counter() - start:.1f} s)")
    for key in ("train_json", "train_image_root", "val_json", "val_image_root"):
        print(f"  {key}: {paths[key]}")


if __name__ == "__main__":
    main()
