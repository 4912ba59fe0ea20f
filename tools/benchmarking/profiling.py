"""torch.profiler over batch-1 inference: the operators with the most self time."""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from .timing import synchronize

PROFILE_TOP_OPS = 15


def profile_inference(model: torch.nn.Module, inputs, repeats: int, device: str, autocast: Callable) -> Dict[str, Any]:
    """torch.profiler over ``repeats`` batch-1 inferences (after one untimed): the operators with the
    most self time (device time on CUDA), per inference."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    model.eval()
    with torch.no_grad(), autocast():
        model(inputs)
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                model(inputs)
            synchronize(device)
    events = prof.key_averages()
    total_ms = sum(getattr(e, attr) for e in events) / 1000.0 / repeats
    top = sorted(events, key=lambda e: -getattr(e, attr))[:PROFILE_TOP_OPS]
    return {
        "sort_by": attr,
        "repeats": repeats,
        "total_self_ms": total_ms,
        "ops": [{"op": e.key, "self_ms": getattr(e, attr) / 1000.0 / repeats, "calls": e.count // repeats} for e in top],
    }

