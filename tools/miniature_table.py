#!/usr/bin/env python
"""The paper's claims in miniature (docs/MINIATURE.md): train every row's config with every seed on the
synthetic shapes, collect the final evaluation of each run and write the table (mean ± std over seeds).

    python tools/miniature_table.py                       # all rows x seeds 0 1 2, then the table
    python tools/miniature_table.py --jobs 2 --seeds 0 1 2 3
    python tools/miniature_table.py --collect-only        # the table from the runs already finished

A run whose metrics.json already holds its final evaluation is not repeated, so an interrupted table
continues where it stopped; a run folder with a train.log but no final evaluation (being trained by
another runner, or stopped) is skipped: remove the folder to train it again. The small CLIP
(tools/pretrain_small_clip.py, cached) is built first. Runs are started as ``train_net.py``
processes, one thread each (--jobs at a time), with the schedule overrides of SCHEDULES (a
shorter schedule than the quickstarts', stated in the table).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
SMALL_CLIP = "datasets/small_clip/RN-tiny_shapes.pt"
DOC = ROOT / "docs" / "MINIATURE.md"
BEGIN, END = "<!-- miniature-table:begin (tools/miniature_table.py) -->", "<!-- miniature-table:end -->"

# The table's schedules, the same for every row of a task: half the quickstarts' 300 iterations, and
# for detection half their 256-pixel input, so that 24 runs fit a shared 2-core machine.
SCHEDULES: Dict[str, List[str]] = {
    "detection": ["SOLVER.MAX_ITER", "150", "SOLVER.WARMUP_ITERS", "25", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                  "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                  "SOLVER.CHECKPOINT_PERIOD", "100000"],
    "semseg": ["SOLVER.MAX_ITER", "150", "SOLVER.WARMUP_ITERS", "25", "SOLVER.CHECKPOINT_PERIOD", "100000"],
}
METRICS: Dict[str, List[Tuple[str, str]]] = {
    "detection": [("bbox/AP", "box AP"), ("segm/AP", "mask AP")],
    "semseg": [("sem_seg/mIoU", "mIoU")],
}


@dataclass(frozen=True)
class Row:
    task: str  # "detection" or "semseg"
    name: str  # folder name of its runs
    label: str  # what the table calls it
    config: str
    small_clip: bool
    opts: Tuple[str, ...] = field(default=())


# Per task: the CLIP baseline's config and DenseCLIP's (same architecture otherwise).
CONFIGS: Dict[str, Tuple[str, str]] = {
    "detection": ("configs/Synthetic/mask_rcnn_clip_RN-tiny_FPN_shapes.yaml",
                  "configs/Synthetic/mask_rcnn_denseclip_stock_RN-tiny_FPN_shapes.yaml"),
    "semseg": ("configs/Synthetic/semantic_fpn_clip_RN-tiny_shapes.yaml",
               "configs/Synthetic/semantic_fpn_denseclip_RN-tiny_shapes.yaml"),
}
NO_CONTEXT_DECODER = ("MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED", "False")  # = MODEL.DENSECLIP.PROMPTING "none"
PRE_MODEL_PROMPTING = ("MODEL.DENSECLIP.PROMPTING", "pre")

# The same five rows for each task, in this order.
ROWS: List[Row] = [
    row
    for task, (baseline, denseclip) in CONFIGS.items()
    for row in (
        Row(task, "clip_random", "CLIP baseline, random init", baseline, False),
        Row(task, "clip_small", "CLIP baseline, small-CLIP init", baseline, True),
        Row(task, "denseclip_small", "DenseCLIP, small-CLIP init", denseclip, True),
        Row(task, "denseclip_small_no_ctx", "DenseCLIP without context decoder, small-CLIP init", denseclip,
            True, NO_CONTEXT_DECODER),
        Row(task, "denseclip_small_pre", "DenseCLIP with pre-model prompting, small-CLIP init", denseclip,
            True, PRE_MODEL_PROMPTING),
    )
]


def run_dir(output: Path, row: Row, seed: int) -> Path:
    return output / row.task / row.name / f"seed{seed}"


def final_metrics(path: Path, task: str) -> Optional[Dict[str, float]]:
    """The last evaluation record of a run's metrics.json, or None when it has none yet."""
    key = METRICS[task][0][0]
    last = None
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if key in record:
                    last = record
    return last


def train(row: Row, seed: int, output: Path, python: str) -> str:
    """Run one config x seed unless it is finished; returns a one-line status."""
    out = run_dir(output, row, seed)
    if final_metrics(out / "metrics.json", row.task) is not None:
        return f"done already: {out}"
    if (out / "train.log").exists():
        # Another runner is training it, or a run stopped here: never two processes in one folder.
        return f"skipped: {out / 'train.log'} exists without a final evaluation (remove {out} to run it again)"
    opts = [*SCHEDULES[row.task], *row.opts, "SEED", str(seed), "OUTPUT_DIR", str(out),
            "MODEL.CLIP.PRETRAINED", SMALL_CLIP if row.small_clip else ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "train.log", "x") as log:
        code = subprocess.call([python, "train_net.py", "--config-file", row.config, *opts],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    status = "ok" if code == 0 else f"FAILED (exit {code}, see {out / 'train.log'})"
    return f"{row.task}/{row.name}/seed{seed}: {status} in {time.perf_counter() - start:.0f} s"


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(output: Path, seeds: Sequence[int]) -> str:
    """Markdown tables (one per task) of mean ± sample std over the finished seeds, and every value."""
    lines = []
    for task, title in (("detection", "Mask R-CNN (box / mask AP, %)"), ("semseg", "Semantic FPN (mIoU, %)")):
        metrics = METRICS[task]
        lines += [f"**{title}**, schedule: `{' '.join(SCHEDULES[task])}`", ""]
        header = ["row", *[m[1] + " (mean ± std)" for m in metrics], "seeds", "per seed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in ROWS if r.task == task):
            found = {s: final_metrics(run_dir(output, row, s) / "metrics.json", task) for s in seeds}
            done = {s: m for s, m in found.items() if m is not None}
            cells = [mean_std([m[key] for m in done.values()]) for key, _ in metrics]
            per_seed = "; ".join(f"{s}: " + " / ".join(f"{m[key]:.1f}" for key, _ in metrics) for s, m in done.items())
            lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {len(done)} of {len(seeds)} | {per_seed or '–'} |")
        lines.append("")
    return "\n".join(lines)


def write_table(text: str, doc: Path = DOC) -> None:
    """Replace the generated part of docs/MINIATURE.md (between the markers), keeping the prose."""
    block = f"{BEGIN}\n{text}\n{END}"
    current = doc.read_text() if doc.is_file() else f"# DenseCLIP in miniature\n\n{BEGIN}\n{END}\n"
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{doc}: the markers {BEGIN!r} and {END!r} are missing")
    before, rest = current.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    doc.write_text(before + block + after)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="training processes at a time (one thread each)")
    p.add_argument("--tasks", nargs="+", choices=sorted(SCHEDULES), default=sorted(SCHEDULES))
    p.add_argument("--rows", nargs="+", choices=sorted({r.name for r in ROWS}), default=None,
                   help="train only these rows (default: all); the table shows every row")
    p.add_argument("--output", default="output/miniature", help="runs go to OUTPUT/<task>/<row>/seed<k>")
    p.add_argument("--collect-only", action="store_true", help="write the table from finished runs, train nothing")
    args = p.parse_args(argv)
    output = (ROOT / args.output).resolve()
    python = sys.executable
    if not args.collect_only:
        # Task-major (the cheaper semseg first), then seed-major: an interrupted table has whole seeds of
        # every row of a task rather than all seeds of a few rows.
        work = [(row, seed) for task in ("semseg", "detection") if task in args.tasks
                for seed in args.seeds for row in ROWS if row.task == task and (not args.rows or row.name in args.rows)]
        if any(row.small_clip for row, _ in work):
            subprocess.check_call([python, "tools/pretrain_small_clip.py", "--output", SMALL_CLIP], cwd=ROOT)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for status in pool.map(lambda item: train(*item, output, python), work):
                print(f"[miniature] {status}", flush=True)
                write_table(table(output, args.seeds))
    write_table(table(output, args.seeds))
    print(f"[miniature] table written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
