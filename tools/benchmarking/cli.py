"""Command line of ``python tools/benchmark.py``: options, and the run over every config,
pair and target, written as JSON and Markdown."""
from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .configs import DEFAULT_CONFIGS, PAPER_FLOPS_SIZE, resolve_config_path
from .machine import machine_info, peak_tflops
from .paired import paired_ratios
from .phases import benchmark_config
from .report import print_summary, write_report
from .targets import TARGETS, compare, evaluate_targets, find_pairs
from .timing import amp_dtype

logger = logging.getLogger("benchmark")


def parse_size(text: str) -> Tuple[int, int]:
    """'1333x800' -> (width, height)."""
    try:
        w, h = text.lower().split("x")
        size = (int(w), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1333x800; got {text!r}")
    if min(size) < 32:
        raise argparse.ArgumentTypeError(f"size {text!r} is smaller than 32 pixels")
    return size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/benchmark.py",
        description="Training/inference time, memory, FLOPs and parameters of DenseCLIP vs its CLIP baselines "
        "and Detectron2's R50-FPN Mask R-CNN, in one process on the same synthetic inputs.",
    )
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="config files (paths, or relative to the repository / its configs/ folder); "
                   "default: the R50 RetinaNet and Mask R-CNN pairs + Detectron2's R50-FPN Mask R-CNN")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true",
                   help="autocast (fp16 on CUDA with a GradScaler for training, bf16 on CPU; see --amp-dtype)")
    p.add_argument("--amp-dtype", choices=["auto", "float16", "bfloat16"], default="auto")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(1333, 800)], metavar="WxH",
                   help="input sizes (width x height) of the timed runs; default 1333x800")
    p.add_argument("--flops-size", type=parse_size, default=PAPER_FLOPS_SIZE, metavar="WxH",
                   help="input size of the FLOP count; default 1280x800 (the paper's)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations before each timed phase")
    p.add_argument("--repeats", type=int, default=10, help="timed iterations of each phase")
    p.add_argument("--batch-train", type=int, default=2)
    p.add_argument("--batch-throughput", type=int, default=8)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true", help="skip latency, throughput and breakdown")
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--skip-breakdown", action="store_true", help="skip the per-component inference breakdown")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="peak TFLOP/s for the utilisation figures (default on CUDA: the GPU's dense fp16/bf16 "
                   "peak from a table; on CPU none is assumed and utilisation is not reported)")
    p.add_argument("--profile", action="store_true",
                   help="also run torch.profiler over batch-1 inference and report the top operators by self time")
    p.add_argument("--skip-paired", action="store_true",
                   help="skip the paired rounds (DenseCLIP and its CLIP baseline resident together, timed in "
                   "alternation); the time targets are then checked on the separately timed phases")
    p.add_argument("--paired-repeats", type=int, default=0,
                   help="alternating rounds of each paired phase (0: --repeats)")
    p.add_argument("--keep-score-thresh", action="store_true",
                   help="keep the configs' test score thresholds; by default they are set to 0 so that every "
                   "(randomly initialised) model post-processes exactly TEST.DETECTIONS_PER_IMAGE detections "
                   "(100: the mask head runs on 100 boxes, as in mmdet's get_flops)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: leave as is)")
    p.add_argument("--output-json", default="benchmark.json")
    p.add_argument("--output-md", default="benchmark.md")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs merged into every config (after the file), e.g. "
                   "--opts MODEL.CLIP.MODEL_NAME RN-tiny MODEL.CLIP.MODEL_CONFIG_FILE RN-tiny.json")
    return p



def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logger.setLevel(logging.INFO)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.warmup < 0 or args.repeats < 1 or args.paired_repeats < 0:
        raise SystemExit("--warmup and --paired-repeats must be >= 0 and --repeats >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import denseclip  # noqa: F401  (registers the project's meta-architectures and backbones)

    paths = [resolve_config_path(p) for p in args.configs]
    sizes = list(dict.fromkeys(tuple(s) for s in args.sizes))
    command = "python tools/benchmark.py " + " ".join(shlex.quote(a) for a in argv)
    machine = machine_info(args.device)
    peak = peak_tflops(args, machine)
    report: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "settings": {
            "device": args.device,
            "amp": args.amp,
            "amp_dtype": str(amp_dtype(args)).replace("torch.", "") if args.amp else None,
            "sizes": [f"{w}x{h}" for w, h in sizes],
            "flops_size": f"{args.flops_size[0]}x{args.flops_size[1]}",
            "warmup": args.warmup,
            "repeats": args.repeats,
            "batch_train": args.batch_train,
            "batch_inference": 1,
            "batch_throughput": args.batch_throughput,
            "seed": args.seed,
            "keep_score_thresh": args.keep_score_thresh,
            "skip_train": args.skip_train,
            "skip_inference": args.skip_inference,
            "skip_flops": args.skip_flops,
            "skip_paired": args.skip_paired,
            "profile": args.profile,
            "peak_tflops": peak,
            "paired_repeats": args.paired_repeats or args.repeats,
            "opts": list(args.opts),
            "configs": [str(p) for p in paths],
        },
        "targets": dict(TARGETS),
        "results": [],
    }
    for path in paths:
        logger.info("=== %s", path)
        report["results"].append(benchmark_config(path, args, sizes, peak))
    report["comparisons"] = []
    for a, b, kind in find_pairs(report["results"]):
        paired = None
        if kind == "denseclip_vs_clip_baseline" and not args.skip_paired and not (args.skip_train and args.skip_inference):
            logger.info("=== paired rounds: %s / %s", a["name"], b["name"])
            try:
                paired = paired_ratios(Path(a["config"]), Path(b["config"]), args, sizes)
            except Exception as e:  # the separately timed ratios still stand
                logger.exception("paired rounds %s / %s failed", a["name"], b["name"])
                a["errors"]["paired"] = repr(e)
        report["comparisons"].append(compare(a, b, kind, paired))
    report["checks"] = evaluate_targets(report["results"], report["comparisons"], args)
    report["all_targets_passed"] = all(c["status"] != "FAIL" for c in report["checks"])

    write_report(report, args.output_json, args.output_md)
    print_summary(report)
    if args.output_json or args.output_md:
        print(f"\nwrote {args.output_json or '-'} and {args.output_md or '-'}")
    return report
