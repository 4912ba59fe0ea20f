"""The machine measured (CPU, GPU, software versions), the GPU's peak TFLOP/s and the achieved
utilisation of a timed config."""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, Optional

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> Dict[str, Any]:
    import detectron2

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": getattr(detectron2, "__version__", "?"),
        "device": device,
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    try:
        from importlib.metadata import version

        info["fvcore"] = version("fvcore")
        info["open_clip_torch"] = version("open_clip_torch")
    except Exception:  # metadata is informative only
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# Dense fp16/bf16 tensor-core peaks (TFLOP/s, vendor data sheets), by substring of the GPU name; the
# first match wins. Utilisation is reported against this peak for fp32 and AMP runs alike.
GPU_PEAK_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("A100", 312.0),
    ("V100", 125.0),
)


def peak_tflops(args, machine: Dict[str, Any]) -> Optional[float]:
    """--peak-tflops, else the table's fp16/bf16 peak of the GPU benchmarked (None on CPU)."""
    if args.peak_tflops:
        return args.peak_tflops
    gpu = machine.get("gpu") or ""
    return next((peak for name, peak in GPU_PEAK_TFLOPS if name in gpu), None)


def utilization(entry: Dict[str, Any], gmacs_per_image: float, peak: float) -> Dict[str, Any]:
    """Achieved FLOP/s (2 flops per multiply-add, as hardware peaks count) of the timed phases, and
    their fraction of ``peak``. Training counts 3x the inference FLOPs (forward + backward), an estimate."""
    out: Dict[str, Any] = {"gmacs_per_image": gmacs_per_image, "peak_tflops": peak,
                           "training_flops": "3 x inference FLOPs per image (estimate)"}
    for phase, factor in (("inference", 1.0), ("throughput", 1.0), ("train", 3.0)):
        timing = entry.get(phase)
        if not timing:
            continue
        images_per_s = timing["batch"] * 1000.0 / timing["median_ms"]
        achieved = 2.0 * factor * gmacs_per_image * images_per_s / 1000.0
        out[phase] = {"achieved_tflops": achieved, "fraction_of_peak": achieved / peak}
    return out

