"""Peak memory of a measured phase: CUDA allocator peaks, or on CPU the phase's peak RSS."""
from __future__ import annotations

import contextlib
import gc
import resource
from typing import Any, Dict, Iterator, Optional

import torch


def _read_proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measure_memory(device: str) -> Iterator[Dict[str, Any]]:
    """Peak memory of the block. CUDA: max allocated (and reserved). CPU: peak RSS of the block
    (VmHWM reset before it), or the process-lifetime ru_maxrss where it cannot be reset."""
    out: Dict[str, Any] = {}
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        out.update({
            "method": "torch.cuda.max_memory_allocated",
            "peak_mb": peak / 2**20,
            "before_mb": before / 2**20,
            "peak_delta_mb": (peak - before) / 2**20,
            "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
        })
        return
    resettable = _reset_peak_rss() and _read_proc_status_kb("VmHWM") is not None
    before_kb = _read_proc_status_kb("VmRSS") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield out
    if resettable:
        peak_kb = _read_proc_status_kb("VmHWM")
        method = "peak RSS of the phase (/proc/self/status VmHWM after clear_refs 5)"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        method = "resource.getrusage ru_maxrss (process-lifetime peak; delta is only a lower bound)"
    out.update({
        "method": method,
        "peak_mb": peak_kb / 1024.0,
        "before_mb": before_kb / 1024.0,
        "peak_delta_mb": (peak_kb - before_kb) / 1024.0,
    })

