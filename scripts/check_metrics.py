#!/usr/bin/env python
"""Print the final COCO AP of a training run (Detectron2's metrics.json) and check a minimum box AP."""
import argparse
import json
import sys
from typing import Dict


def final_evaluation(metrics_file: str) -> Dict[str, float]:
    """The last metrics.json record that holds evaluation results (bbox/AP, segm/AP, ...)."""
    last = {}
    with open(metrics_file) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                if "bbox/AP" in record:
                    last = record
    if not last:
        raise SystemExit(f"{metrics_file}: no evaluation results (bbox/AP) found")
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics_file")
    parser.add_argument("--min-box-ap", type=float, default=0.0, help="minimum bbox AP, in percent")
    args = parser.parse_args()
    record = final_evaluation(args.metrics_file)
    summary = ", ".join(f"{k} {record[k]:.1f}" for k in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50") if k in record)
    print(f"[metrics] iteration {record.get('iteration', '?')}: {summary}")
    if record["bbox/AP"] < args.min_box_ap:
        print(f"[metrics] box AP {record['bbox/AP']:.1f} is below the required {args.min_box_ap:.1f}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
