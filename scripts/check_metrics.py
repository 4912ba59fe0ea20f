#!/usr/bin/env python
"""Print the final evaluation of a training run (Detectron2's metrics.json) and check a floor:
COCO box AP (--min-box-ap) for detectors, mIoU (--min-miou) for semantic segmentation."""
import argparse
import json
import sys
from typing import Dict

# The key each floor checks, and what the summary line shows, by task.
TASKS = {
    "detection": ("bbox/AP", ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50")),
    "semantic segmentation": ("sem_seg/mIoU", ("sem_seg/mIoU", "sem_seg/fwIoU", "sem_seg/mACC", "sem_seg/pACC")),
}


def final_evaluation(metrics_file: str, key: str) -> Dict[str, float]:
    """The last metrics.json record that holds ``key`` (e.g. bbox/AP or sem_seg/mIoU)."""
    last = {}
    with open(metrics_file) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                if key in record:
                    last = record
    if not last:
        raise SystemExit(f"{metrics_file}: no evaluation results ({key}) found")
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics_file")
    floors = parser.add_mutually_exclusive_group()
    floors.add_argument("--min-box-ap", type=float, default=None, help="minimum bbox AP, in percent")
    floors.add_argument("--min-miou", type=float, default=None, help="minimum sem_seg mIoU, in percent")
    args = parser.parse_args()
    task = "semantic segmentation" if args.min_miou is not None else "detection"
    key, shown = TASKS[task]
    floor = args.min_miou if args.min_miou is not None else (args.min_box_ap or 0.0)
    record = final_evaluation(args.metrics_file, key)
    summary = ", ".join(f"{k} {record[k]:.1f}" for k in shown if k in record)
    print(f"[metrics] iteration {record.get('iteration', '?')}: {summary}")
    if record[key] < floor:
        print(f"[metrics] {key} {record[key]:.1f} is below the required {floor:.1f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
