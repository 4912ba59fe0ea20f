"""Options and the run of ``python tools/gpu_check.py``: training runs, benchmarks, checks,
report; the exit status is 0 only when every enforced check passed."""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import TRAIN_RUNS
from .benchmarks import benchmark_modes, find_config, run_benchmark
from .report import render_markdown
from .training import prepare_data, train_and_evaluate

logger = logging.getLogger("gpu_check")

# GPU targets of the AMP benchmark (issue 13), for this config.
TARGET_CONFIG = "mask_rcnn_denseclip_R50_FPN_1x"
AMP_TRAIN_PEAK_MEMORY_MB_MAX = 8192.0  # batch 2 at 1333x800
AMP_INFERENCE_IMAGES_PER_S_MIN = 20.0  # batch 1, on an H100-class GPU
H100_CLASS = ("H100", "H200")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true",
                   help="dry run: RN-tiny towers, small inputs, 2 iterations, small benchmark (timings not checked)")
    p.add_argument("--output", default="output/gpu_check", help="folder of report.md, report.json and every run")
    p.add_argument("--steps", nargs="+", choices=["train", "benchmark"], default=["train", "benchmark"])
    p.add_argument("--runs", nargs="+", default=[], metavar="TEXT",
                   help="train only the entries of TRAIN_RUNS whose name contains one of these")
    p.add_argument("--precisions", nargs="+", choices=["float16", "bfloat16"], default=None,
                   help="AMP dtypes of the training runs (default: both on CUDA, bfloat16 on CPU)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per run (default 50; --tiny 2)")
    p.add_argument("--data", choices=["auto", "tiny_coco", "synthetic"], default="auto",
                   help="evaluation data: auto = tiny_coco if $DENSECLIP_TINY_COCO holds it, else synthetic")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs merged into every training config (last option)")
    return p


def _check(name: str, value: Any, target: str, passed: Optional[bool], enforced: bool = True,
           note: str = "") -> Dict[str, Any]:
    status = "N/A" if passed is None else ("PASS" if passed else "FAIL")
    return {"check": name, "value": value, "target": target, "status": status, "enforced": enforced, "note": note}


def training_checks(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    checks = []
    for r in runs:
        label = f"{r['run']} {r['precision']}"
        for phase, err in r["errors"].items():
            checks.append(_check(f"{label}: {phase}", err, "no exception", False))
        if "losses" in r:
            finite = all(v["finite"] for v in r["losses"].values())
            checks.append(_check(f"{label}: losses finite", finite, "all finite", finite))
        calls = (r.get("evaluation") or {}).get("text_encoder_calls_after_first_image", "missing")
        if calls != "missing":
            checks.append(_check(f"{label}: text-encoder calls at inference after the first image", calls, "== 0",
                                 None if calls is None else calls == 0))
        if "demo" in r:
            ok = r["demo"]["images"] > 0 and not r["demo"]["failed"]
            checks.append(_check(f"{label}: demo", r["demo"]["images"], "every image drawn", ok))
    return checks


def benchmark_checks(benchmarks: List[Dict[str, Any]], args) -> List[Dict[str, Any]]:
    checks = []
    for b in benchmarks:
        if "error" in b:
            checks.append(_check(f"benchmark {b['mode']}", b["error"], "no exception", False))
            continue
        for name, errs in b["headline"]["errors"].items():
            checks.append(_check(f"benchmark {b['mode']}: {name}", errs, "no errors", False))
        for c in b["checks"]:
            timing = "time ratio" in c["check"]
            enforced = not (args.tiny and timing)
            checks.append(_check(f"benchmark {b['mode']}: {c['check']}", c["value"], c["target"],
                                 None if c["status"] == "N/A" else c["status"] == "PASS", enforced,
                                 c["note"] if enforced else "dry run: timings not checked"))
    amp = next((b for b in benchmarks if b["mode"] == "amp" and "error" not in b), None)
    subject = find_config(amp, TARGET_CONFIG)
    cuda = args.device == "cuda" and not args.tiny
    gpu = (amp or {}).get("headline", {}).get("gpu") or ""
    memory = (subject or {}).get("train_peak_memory_mb")
    checks.append(_check(f"AMP training peak memory {TARGET_CONFIG}, batch 2 (MB)", memory,
                         f"< {AMP_TRAIN_PEAK_MEMORY_MB_MAX:.0f}",
                         (memory < AMP_TRAIN_PEAK_MEMORY_MB_MAX) if cuda and memory is not None else None,
                         note="" if cuda else "CUDA only"))
    speed = (subject or {}).get("images_per_s_batch1")
    h100 = cuda and any(name in gpu for name in H100_CLASS)
    checks.append(_check(f"AMP inference {TARGET_CONFIG}, batch 1 (images/s)", speed,
                         f">= {AMP_INFERENCE_IMAGES_PER_S_MIN:.0f} on an H100-class GPU",
                         (speed >= AMP_INFERENCE_IMAGES_PER_S_MIN) if h100 and speed is not None else None,
                         note="" if h100 else "H100 / H200 only"))
    return checks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def run(args, argv: Sequence[str]) -> Dict[str, Any]:
    from benchmarking.machine import machine_info

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python tools/gpu_check.py " + " ".join(shlex.quote(a) for a in argv),
        "device": args.device, "tiny": args.tiny, "iterations": args.iterations,
        "machine": machine_info(args.device), "python": sys.executable, "torch_file": torch.__file__,
        "runs": [], "benchmarks": [], "errors": {},
    }
    if "train" in args.steps:
        precisions = args.precisions or (["float16", "bfloat16"] if args.device == "cuda" else ["bfloat16"])
        runs = [r for r in TRAIN_RUNS if not args.runs or any(t in r.name for t in args.runs)]
        try:
            report["data"] = prepare_data(args, out)
        except Exception as e:
            logger.exception("data preparation failed")
            report["errors"]["data"] = repr(e)
            runs = []
        for r in runs:
            for i, precision in enumerate(precisions):
                logger.info("=== training %s with %s autocast", r.name, precision)
                report["runs"].append(train_and_evaluate(r, precision, args, report["data"],
                                                         out / f"{_slug(r.name)}_{precision}", demo=i == 0))
    if "benchmark" in args.steps:
        for mode in benchmark_modes(args):
            logger.info("=== benchmark %s", mode)
            report["benchmarks"].append(run_benchmark(args, mode, out))
    report["checks"] = [_check(f"{k}", v, "no exception", False) for k, v in report["errors"].items()]
    report["checks"] += training_checks(report["runs"]) + benchmark_checks(report["benchmarks"], args)
    report["passed"] = not any(c["status"] == "FAIL" and c["enforced"] for c in report["checks"])
    with open(out / "report.json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    (out / "report.md").write_text(render_markdown(report))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.iterations is None:
        args.iterations = 2 if args.tiny else 50
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but no CUDA device is available (--device cpu --tiny is the dry run)",
              file=sys.stderr)
        return 2
    import denseclip  # noqa: F401  (registers the project's models and datasets)

    report = run(args, argv)
    failed = [c for c in report["checks"] if c["status"] == "FAIL" and c["enforced"]]
    for c in failed:
        print(f"[FAIL] {c['check']}: {c['value']} (target {c['target']})", file=sys.stderr)
    print(f"gpu_check: {'PASSED' if report['passed'] else f'FAILED ({len(failed)} check(s))'}; "
          f"report: {Path(args.output) / 'report.md'}")
    return 0 if report["passed"] else 1
