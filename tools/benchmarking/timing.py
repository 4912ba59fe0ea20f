"""Wall-clock timing of repeated calls (synchronised on CUDA), their statistics, and the autocast
context of AMP runs."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _quartiles(sorted_values: List[float]) -> Tuple[float, float]:
    if len(sorted_values) < 2:
        return sorted_values[0], sorted_values[0]
    q1, _, q3 = statistics.quantiles(sorted_values, n=4, method="inclusive")
    return q1, q3


def summarize(times_s: List[float]) -> Dict[str, Any]:
    """Median and spread (IQR, min/max) of a list of durations, in milliseconds."""
    ms = sorted(t * 1000.0 for t in times_s)
    q1, q3 = _quartiles(ms)
    return {
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "repeats": len(ms),
        "times_ms": [round(t, 4) for t in ms],
    }


def summarize_ratios(ratios: List[float]) -> Dict[str, Any]:
    """Median and spread of per-round time ratios."""
    values = sorted(ratios)
    q1, q3 = _quartiles(values)
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": values[0], "max": values[-1],
            "rounds": len(values), "ratios": [round(r, 5) for r in ratios]}


def time_phase(fn: Callable[[], Any], warmup: int, repeats: int, device: str,
               on_timed_start: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    if on_timed_start is not None:
        on_timed_start()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return summarize(times)



def autocast_context(args) -> Callable[[], contextlib.AbstractContextManager]:
    if not args.amp:
        return contextlib.nullcontext
    dtype = amp_dtype(args)
    return lambda: torch.autocast(device_type=args.device, dtype=dtype)


def amp_dtype(args) -> Optional[torch.dtype]:
    if not args.amp:
        return None
    if args.amp_dtype == "float16":
        return torch.float16
    if args.amp_dtype == "bfloat16":
        return torch.bfloat16
    return torch.float16 if args.device == "cuda" else torch.bfloat16

