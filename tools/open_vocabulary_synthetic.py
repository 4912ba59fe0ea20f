#!/usr/bin/env python
"""Open vocabulary measured on the embedded data (issue 28): train the quickstart's language-guided
DenseCLIP Mask R-CNN on the 24 base classes of the synthetic colour-shape block, from the small CLIP,
and evaluate it with all 36 names (AP50 on the 12 novel classes, each an unseen colour-shape pairing);
the control is the same run with an untrained text tower. Ends with the line

    novel AP50 X | base AP50 Y | control novel AP50 Z

(box AP50 in %, means over --seeds). ``--vocabulary-study`` then evaluates the first seed's model
with other vocabularies (the training names, base + novel, a handful of names) and reports how the
scores of the same objects move (denseclip/data/synthetic_open_vocabulary.py, scripts/quickstart.sh ov).

    python tools/open_vocabulary_synthetic.py --small-clip datasets/small_clip/RN-tiny_shapes.pt --seeds 0 1 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "projects" / "DenseCLIP"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = ROOT / "configs" / "Synthetic" / "mask_rcnn_denseclip_RN-tiny_FPN_shapes_ov.yaml"
UNTRAINED_TEXT_TOWER = ["MODEL.DENSECLIP.TEXT_ENCODER_MODEL", "RN-tiny", "MODEL.DENSECLIP.TEXT_ENCODER_PRETRAINED", ""]


def final_metrics(output_dir: Path) -> Dict[str, float]:
    """The last evaluation's metrics of a run (Detectron2's metrics.json, one JSON object per line)."""
    rows = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines() if line.strip()]
    evaluated = [r for r in rows if "bbox/AP50_novel" in r]
    if not evaluated:
        raise SystemExit(f"{output_dir}/metrics.json holds no open-vocabulary evaluation (bbox/AP50_novel)")
    return evaluated[-1]


def train(runs: Dict[str, List[str]], output: Path, opts: List[str]) -> None:
    """Train the runs (name -> extra overrides) side by side, one process each, logs in their folders."""
    procs = []
    for name, extra in runs.items():
        out = output / name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(CONFIG), "OUTPUT_DIR", str(out), *extra, *opts]
        log = open(out / "train.log", "w")
        procs.append((name, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for name, proc, log in procs:
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    if failed:
        raise SystemExit(f"training failed: {failed} (see {output}/<run>/train.log)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-clip", required=True, help="the small CLIP checkpoint (tools/pretrain_small_clip.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default="output/quickstart_ov")
    parser.add_argument("--vocabulary-study", action="store_true", help="also evaluate the first seed's model with other vocabularies")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run (KEY VALUE ...)")
    args = parser.parse_args()
    output = Path(args.output).resolve()
    rows = []
    for seed in args.seeds:
        common = ["MODEL.CLIP.PRETRAINED", args.small_clip, "SEED", str(seed), *args.opts]
        runs = {f"seed{seed}/small_clip": [], f"seed{seed}/control_untrained_text": UNTRAINED_TEXT_TOWER}
        pending = {k: v for k, v in runs.items() if not (output / k / "model_final.pth").is_file()}
        if pending:
            train(pending, output, common)
        trained, control = (final_metrics(output / k) for k in runs)
        rows.append((seed, trained, control))
        print(f"seed {seed}: novel AP50 {trained['bbox/AP50_novel']:.1f} | base AP50 {trained['bbox/AP50_base']:.1f} | "
              f"control novel AP50 {control['bbox/AP50_novel']:.1f} (control base AP50 {control['bbox/AP50_base']:.1f}; "
              f"mask novel AP50 {trained['segm/AP50_novel']:.1f} vs control {control['segm/AP50_novel']:.1f})", flush=True)
    if args.vocabulary_study:
        from open_vocabulary_study import vocabulary_study

        vocabulary_study(CONFIG, output / f"seed{args.seeds[0]}" / "small_clip", args.small_clip, args.opts)

    def mean(values: List[float]) -> str:
        text = f"{statistics.mean(values):.1f}"
        return text + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    print(f"novel AP50 {mean([t['bbox/AP50_novel'] for _, t, _ in rows])} | base AP50 {mean([t['bbox/AP50_base'] for _, t, _ in rows])} | "
          f"control novel AP50 {mean([c['bbox/AP50_novel'] for _, _, c in rows])}")


if __name__ == "__main__":
    main()
