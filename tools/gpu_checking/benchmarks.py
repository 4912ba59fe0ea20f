"""The benchmark part of the GPU check: ``tools/benchmark.py`` in fp32 and AMP, and the figures
the report shows (images/s, peak memory, achieved TFLOP/s, paired ratios) and checks."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarking import cli as benchmark_cli
from benchmarking.targets import lookup

from .training import TINY_MODEL_OPTS

logger = logging.getLogger("gpu_check")

# The dry run benchmarks one pair at 64x64 with the RN-tiny towers, with AMP only (the fp32 path
# and Detectron2's R50-FPN are covered by tests/test_benchmark.py).
TINY_CONFIGS = ["COCO/mask_rcnn_clip_R50_FPN_1x.yaml", "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"]


def benchmark_modes(args) -> List[str]:
    return ["amp"] if args.tiny else ["fp32", "amp"]


def benchmark_argv(args, mode: str, out: Path) -> List[str]:
    """Arguments of ``python tools/benchmark.py`` for ``mode`` "fp32" or "amp"."""
    argv = ["--device", args.device, "--output-json", str(out / f"benchmark_{mode}.json"),
            "--output-md", str(out / f"benchmark_{mode}.md")]
    if mode == "amp":
        argv += ["--amp", "--amp-dtype", "float16" if args.device == "cuda" else "bfloat16"]
    if args.tiny:
        argv += ["--configs", *TINY_CONFIGS, "--sizes", "64x64", "--flops-size", "64x64", "--warmup", "1",
                 "--repeats", "1", "--batch-throughput", "2", "--skip-breakdown", "--peak-tflops", "1.0",
                 "--opts", *TINY_MODEL_OPTS]
    else:
        argv += ["--sizes", "1333x800"]
    return argv


def headline(report: Dict[str, Any]) -> Dict[str, Any]:
    """Per config: batch-1 images/s, throughput, training time and peak memory, utilisation."""
    configs = {}
    for r in report["results"]:
        for size, e in r.get("sizes", {}).items():
            latency = lookup(e, "inference", "median_ms")
            configs[f"{r['name']}@{size}"] = {
                "name": r["name"],
                "size": size,
                "images_per_s_batch1": 1000.0 / latency if latency else None,
                "throughput_images_per_s": lookup(e, "throughput", "images_per_s"),
                "train_ms": lookup(e, "train", "median_ms"),
                "train_peak_memory_mb": lookup(e, "train", "memory", "peak_mb"),
                "inference_peak_memory_mb": lookup(e, "inference", "memory", "peak_mb"),
                "achieved_tflops": {ph: lookup(e, "utilization", ph, "achieved_tflops")
                                    for ph in ("inference", "throughput", "train")},
                "fraction_of_peak": {ph: lookup(e, "utilization", ph, "fraction_of_peak")
                                     for ph in ("inference", "throughput", "train")},
                "text_encoder_calls_timed": e.get("text_encoder_calls_timed"),
            }
    paired = [{"subject": c["subject"], "reference": c["reference"], "size": size, "phase": phase,
               "ratio": stats["ratio"]["median"]}
              for c in report["comparisons"] for size, phases in (c.get("paired") or {}).items()
              for phase, stats in phases.items()]
    return {"configs": configs, "paired": paired, "gflops": {r["name"]: lookup(r, "flops", "gflops") for r in report["results"]},
            "peak_tflops": report["settings"]["peak_tflops"], "gpu": report["machine"].get("gpu"),
            "errors": {r["name"]: r["errors"] for r in report["results"] if r.get("errors")}}


def run_benchmark(args, mode: str, out: Path) -> Dict[str, Any]:
    """One benchmark run; its report's checks, headline figures and files (or the exception)."""
    argv = benchmark_argv(args, mode, out)
    try:
        report = benchmark_cli.main(argv)
    except Exception as e:
        logger.exception("benchmark %s failed", mode)
        return {"mode": mode, "argv": argv, "error": repr(e)}
    return {"mode": mode, "argv": argv, "amp_dtype": report["settings"]["amp_dtype"], "checks": report["checks"],
            "headline": headline(report), "json": argv[argv.index("--output-json") + 1],
            "markdown": argv[argv.index("--output-md") + 1]}


def find_config(bench: Optional[Dict[str, Any]], name: str) -> Optional[Dict[str, Any]]:
    """The headline figures of config ``name`` in a benchmark run (first size)."""
    configs = lookup(bench, "headline", "configs") or {}
    return next((c for c in configs.values() if c["name"] == name), None)
