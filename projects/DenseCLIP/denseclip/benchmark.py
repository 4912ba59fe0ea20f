"""Speed, memory, FLOPs and parameters of DenseCLIP vs its CLIP baselines and Detectron2's R50-FPN.

Every config is built in ONE process, with the same seed and the same synthetic inputs, and measured
for:

* training iteration time (forward + backward + AdamW step, batch ``--batch-train``),
* inference latency (batch 1) and throughput (batch ``--batch-throughput``, images/s),
* peak memory of each phase (CUDA max allocated; on CPU the peak RSS of the phase, read from
  ``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``, or
  ``resource.getrusage`` where that is not available),
* FLOPs with fvcore through Detectron2's ``FlopCountAnalysis`` (one multiply-add = one flop, like
  mmcv's ``get_flops`` the paper used) and parameters (total, trainable, without the frozen text
  encoder as in the paper's table),
* for DenseCLIP: the number of text-encoder calls during the timed inference repetitions (must be 0:
  text embeddings are cached) and a per-component time breakdown of inference.

DenseCLIP configs are compared with their CLIP baseline (same name with ``clip`` for ``denseclip``)
and with Detectron2's stock R50-FPN Mask R-CNN, and checked against targets (time ratios, FLOPs of
the paper's Table). The time targets are checked on paired rounds: DenseCLIP and its baseline resident
together and timed in alternation, one ratio per round, so that a drifting machine speed cancels.
Results go to a JSON file and a Markdown report.

    python -m denseclip.benchmark --device cuda --output-json bench.json --output-md bench.md
    python -m denseclip.benchmark --device cpu --sizes 640x384 --repeats 3 --skip-flops
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("denseclip.benchmark")

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "configs"

DEFAULT_CONFIGS = [
    "configs/COCO/retinanet_clip_R50_FPN_1x.yaml",
    "configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_clip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml",
]

# The DenseCLIP paper's table (mmcv get_flops at 1280x800): GFLOPs and params (M, without the
# frozen text encoder), keyed by (detector, CLIP model, variant).
PAPER = {
    ("retinanet", "RN50", "clip"): {"gflops": 265.0, "params_m": 38.0},
    ("mask_rcnn", "RN50", "clip"): {"gflops": 301.0, "params_m": 44.0},
    ("retinanet", "RN50", "denseclip"): {"gflops": 285.0, "params_m": 60.0},
    ("mask_rcnn", "RN50", "denseclip"): {"gflops": 327.0, "params_m": 67.0},
    ("retinanet", "RN101", "clip"): {"gflops": 341.0, "params_m": 57.0},
    ("mask_rcnn", "RN101", "clip"): {"gflops": 377.0, "params_m": 63.0},
    ("retinanet", "RN101", "denseclip"): {"gflops": 360.0, "params_m": 78.0},
    ("mask_rcnn", "RN101", "denseclip"): {"gflops": 399.0, "params_m": 84.0},
}
PAPER_FLOPS_SIZE = (1280, 800)

TARGETS = {
    "inference_time_ratio_max": 1.10,
    "train_time_ratio_max": 1.15,
    "flops_rel_tolerance": 0.10,
}

DENSECLIP_META_ARCHS = ("DenseCLIPRCNN", "DenseCLIPRetinaNet")


# ==================================================================================== CLI
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
        prog="python -m denseclip.benchmark",
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


# ==================================================================================== environment
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


# ==================================================================================== configs
def resolve_config_path(path: str) -> Path:
    candidates = [Path(path), REPO_ROOT / path, CONFIG_DIR / path]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"config file {path!r} not found (tried {', '.join(str(c) for c in candidates)})")


def load_config(path: Path, device: str, opts: Sequence[str], keep_score_thresh: bool):
    from denseclip.engine import build_config

    cfg = build_config(str(path), ["MODEL.DEVICE", device, *opts])
    # Random weights: nothing downloads, nothing is read from disk.
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.WEIGHTS = ""
    if not keep_score_thresh:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def describe_config(cfg) -> Dict[str, Any]:
    """Detector family, CLIP model and variant (denseclip / clip / detectron2) of a config."""
    arch = cfg.MODEL.META_ARCHITECTURE
    detector = "retinanet" if "RetinaNet" in arch else ("mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn")
    backbone = cfg.MODEL.BACKBONE.NAME
    if arch in DENSECLIP_META_ARCHS or backbone.startswith("build_denseclip"):
        variant, encoder = "denseclip", cfg.MODEL.CLIP.MODEL_NAME
    elif backbone.startswith("build_clip"):
        variant, encoder = "clip", cfg.MODEL.CLIP.MODEL_NAME
    elif backbone.startswith("build_resnet") or backbone.startswith("build_retinanet_resnet"):
        variant, encoder = "detectron2", f"R{cfg.MODEL.RESNETS.DEPTH}"
    else:
        variant, encoder = "other", backbone
    return {"meta_architecture": arch, "detector": detector, "variant": variant, "encoder": encoder,
            "backbone": backbone}


# ==================================================================================== inputs
def synthetic_images(num: int, size: Tuple[int, int], seed: int) -> List[torch.Tensor]:
    """num float 3 x H x W images in 0..255: noise plus a few flat rectangles (same for every config)."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num):
        img = torch.randint(0, 256, (3, h, w), generator=g).float() * 0.5
        for _ in range(3):
            x0, y0 = int(torch.randint(0, w // 2, (1,), generator=g)), int(torch.randint(0, h // 2, (1,), generator=g))
            x1, y1 = x0 + w // 3, y0 + h // 3
            img[:, y0:y1, x0:x1] = torch.randint(0, 256, (3, 1, 1), generator=g).float()
        images.append(img)
    return images


def synthetic_targets(num: int, size: Tuple[int, int], num_classes: int, seed: int):
    """A few GT boxes per image with box-shaped polygon masks."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    w, h = size
    g = torch.Generator().manual_seed(seed + 1)
    targets = []
    for i in range(num):
        boxes = []
        for _ in range(3):
            x0 = float(torch.randint(0, w // 2, (1,), generator=g))
            y0 = float(torch.randint(0, h // 2, (1,), generator=g))
            bw = float(torch.randint(max(w // 8, 4), w // 2, (1,), generator=g))
            bh = float(torch.randint(max(h // 8, 4), h // 2, (1,), generator=g))
            boxes.append([x0, y0, min(x0 + bw, w - 1.0), min(y0 + bh, h - 1.0)])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor([(3 * i + k) % num_classes for k in range(len(boxes))], dtype=torch.int64)
        inst.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes])
        targets.append(inst)
    return targets


def make_inputs(images: List[torch.Tensor], device: str, targets=None) -> List[Dict[str, Any]]:
    batch = []
    for i, img in enumerate(images):
        item = {"image": img.to(device), "height": img.shape[1], "width": img.shape[2]}
        if targets is not None:
            item["instances"] = targets[i]
        batch.append(item)
    return batch


def model_num_classes(model, cfg) -> int:
    backbone = getattr(model, "backbone", None)
    if hasattr(backbone, "class_names"):
        return len(backbone.class_names)
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES


# ==================================================================================== measurement helpers
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


# ==================================================================================== parameters & FLOPs
def count_parameters(model: torch.nn.Module) -> Dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = _get_submodule(model, "text_side.prompt_encoder")
    text_total = sum(p.numel() for p in text.parameters()) if text is not None else 0
    text_frozen = sum(p.numel() for p in text.parameters() if not p.requires_grad) if text is not None else 0
    return {
        "total": total,
        "trainable": trainable,
        "text_encoder": text_total,
        "text_encoder_frozen": text_frozen,
        # The paper's table counts parameters without the frozen text encoder.
        "excluding_frozen_text_encoder": total - text_frozen,
    }


def _sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and A V, as two batched matmuls (multiply-adds).
    fvcore 0.1.5 has no handle for it (PyTorch's MultiheadAttention uses it in inference)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model: torch.nn.Module, inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """fvcore FLOPs (1 multiply-add = 1 flop) of the model in eval mode on ``inputs`` (batch 1)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    model.eval()
    with torch.no_grad():
        model(inputs)  # fills caches (DenseCLIP's text embeddings) so that the trace is the inference path
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**{"aten::scaled_dot_product_attention": _sdpa_flop_jit})
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
        by_module = analysis.by_module()
        by_operator = analysis.by_operator()
        unsupported = analysis.unsupported_ops()

    def module_flops(prefix_candidates: Sequence[str]) -> Optional[float]:
        for name in prefix_candidates:
            for key in (name, "model." + name):
                if key in by_module:
                    return by_module[key] / 1e9
        return None

    if hasattr(model, "text_side"):  # DenseCLIP: image encoder, text side and FPN side by side
        image_encoder = module_flops(["backbone"])
        fpn = module_flops(["fpn"])
        backbone = sum(module_flops([k]) or 0.0 for k in ("backbone", "text_side", "fpn"))
    else:  # Detectron2's FPN runs the encoder as its bottom_up
        image_encoder = module_flops(["backbone.bottom_up"])
        backbone = module_flops(["backbone"])
        fpn = (backbone or 0.0) - (image_encoder or 0.0)
    components = {
        "backbone": backbone,
        "image_encoder": image_encoder,
        "text_encoder": module_flops(["text_side.prompt_encoder"]),
        "context_decoder": module_flops(["text_side.context_decoder"]),
        "fpn": fpn,
        "proposal_generator": module_flops(["proposal_generator"]),
        "roi_heads": module_flops(["roi_heads"]),
        "retinanet_head": module_flops(["head"]),
    }
    if components["backbone"] is not None:  # score maps etc.: what the feature extraction does outside its modules
        components["backbone_other"] = components["backbone"] - sum(
            components[k] or 0.0 for k in ("image_encoder", "text_encoder", "context_decoder", "fpn"))
    return {
        "gflops": total / 1e9,
        "by_component_gflops": {k: v for k, v in components.items() if v is not None},
        "by_operator_gflops": {k: v / 1e9 for k, v in sorted(by_operator.items(), key=lambda kv: -kv[1])},
        "unsupported_ops": dict(Counter(unsupported)),
        "counting": "fvcore via detectron2.utils.analysis.FlopCountAnalysis; 1 multiply-add = 1 flop; "
                    "elementwise ops (add, mul, sigmoid, softmax, batch_norm...) ignored as in Detectron2; "
                    "aten::scaled_dot_product_attention counted as 2 batched matmuls",
    }


# ==================================================================================== text encoder calls
@contextlib.contextmanager
def count_text_encoder_calls(model: torch.nn.Module) -> Iterator[Optional[Dict[str, int]]]:
    """Counts calls of ``model.text_side.prompt_encoder.forward`` (None when the model has none)."""
    encoder = _get_submodule(model, "text_side.prompt_encoder")
    if encoder is None:
        yield None
        return
    counter = {"calls": 0}
    original = encoder.forward

    def counting_forward(*a, **k):
        counter["calls"] += 1
        return original(*a, **k)

    encoder.forward = counting_forward  # instance attribute: nn.Module.__call__ dispatches to it
    try:
        yield counter
    finally:
        del encoder.forward


# ==================================================================================== per-component breakdown
def _get_submodule(root: torch.nn.Module, path: str) -> Optional[torch.nn.Module]:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, torch.nn.Module):
            return None
    return module


class ComponentTimer:
    """Forward hooks that record inclusive durations and end times of named modules."""

    def __init__(self, device: str):
        self.device = device
        self.durations: Dict[str, float] = {}
        self.end_times: Dict[str, float] = {}
        self.start_times: Dict[str, float] = {}
        self._stack: Dict[str, List[float]] = {}
        self._handles: List[Any] = []

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def watch(self, name: str, module: Optional[torch.nn.Module]) -> None:
        if module is None:
            return

        def pre(_m, _inputs):
            t = self._now()
            self._stack.setdefault(name, []).append(t)
            self.start_times.setdefault(name, t)

        def post(_m, _inputs, _outputs):
            t = self._now()
            start = self._stack[name].pop()
            self.durations[name] = self.durations.get(name, 0.0) + (t - start)
            self.end_times[name] = t

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post))

    def reset(self) -> None:
        self.durations.clear()
        self.end_times.clear()
        self.start_times.clear()
        self._stack.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def breakdown_inference(model: torch.nn.Module, inputs, warmup: int, repeats: int, device: str,
                        autocast: Callable) -> Dict[str, Any]:
    """Median per-component time of batch-1 inference, from forward hooks (synchronised on CUDA).

    Components: preprocess (normalise + pad), image encoder (ResNet stages), attention pool (dense and
    global CLIP embeddings), text encoder (0 when cached), context decoder, score maps (+ cached text,
    normalisation, concat to res5), FPN, heads (RPN + ROI heads, or the RetinaNet head), other
    (post-processing, anchors, NMS...).
    """
    backbone = model.backbone
    dense = hasattr(model, "text_side")
    encoder_path = "backbone" if dense else "backbone.bottom_up"
    encoder = _get_submodule(model, encoder_path)
    last_stage = None
    if encoder is not None:
        for path in ("visual.layer4", "res5"):
            last_stage = _get_submodule(encoder, path)
            if last_stage is not None:
                break
    fpn_path = "fpn" if dense else "backbone"
    timer = ComponentTimer(device)
    timer.watch("model", model)
    timer.watch("backbone", backbone)
    timer.watch("image_encoder", encoder)
    timer.watch("last_stage", last_stage)
    timer.watch("text_encoder", _get_submodule(model, "text_side.prompt_encoder"))
    timer.watch("context_decoder", _get_submodule(model, "text_side.context_decoder"))
    timer.watch("fpn", _get_submodule(model, fpn_path))
    timer.watch("fpn_bottom_up", _get_submodule(model, fpn_path + ".bottom_up"))
    timer.watch("proposal_generator", getattr(model, "proposal_generator", None))
    timer.watch("roi_heads", getattr(model, "roi_heads", None))
    timer.watch("retinanet_head", getattr(model, "head", None))

    samples: Dict[str, List[float]] = {}
    model.eval()
    try:
        with torch.no_grad(), autocast():
            for i in range(warmup + repeats):
                timer.reset()
                model(inputs)
                if i < warmup:
                    continue
                d, e, s = timer.durations, timer.end_times, timer.start_times
                total = d["model"]
                enc = d.get("image_encoder", 0.0)
                attn = (e["image_encoder"] - e["last_stage"]) if "last_stage" in e and "image_encoder" in e else 0.0
                fpn_only = d.get("fpn", 0.0) - d.get("fpn_bottom_up", 0.0)
                if fpn_path == "backbone":  # stock FPN: the encoder runs inside the FPN as its bottom_up
                    text_and_scores = 0.0
                else:
                    text_and_scores = (s["fpn"] - e["image_encoder"]) - d.get("text_encoder", 0.0) - d.get("context_decoder", 0.0)
                parts = {
                    "preprocess": s["backbone"] - s["model"],
                    "image_encoder": enc - attn,
                    "attention_pool": attn,
                    "text_encoder": d.get("text_encoder", 0.0),
                    "context_decoder": d.get("context_decoder", 0.0),
                    "score_maps": text_and_scores,
                    "fpn": fpn_only,
                    "proposal_generator": d.get("proposal_generator", 0.0),
                    "roi_heads": d.get("roi_heads", 0.0),
                    "retinanet_head": d.get("retinanet_head", 0.0),
                }
                parts["other"] = total - sum(parts.values())
                parts["total"] = total
                for k, v in parts.items():
                    samples.setdefault(k, []).append(v * 1000.0)
    finally:
        timer.remove()
    medians = {k: statistics.median(v) for k, v in samples.items()}
    total = medians["total"] or float("nan")
    present = {"text_encoder": _get_submodule(model, "text_side.prompt_encoder") is not None,
               "context_decoder": _get_submodule(model, "text_side.context_decoder") is not None,
               "proposal_generator": hasattr(model, "proposal_generator"),
               "roi_heads": hasattr(model, "roi_heads"),
               "retinanet_head": hasattr(model, "head"),
               "attention_pool": last_stage is not None,
               "score_maps": fpn_path != "backbone"}
    components = {k: {"median_ms": v, "fraction": v / total}
                  for k, v in medians.items() if k == "total" or present.get(k, True)}
    return {
        "method": "forward pre/post hooks with wall-clock timestamps"
                  + (" (torch.cuda.synchronize at every hook)" if device == "cuda" else ""),
        "repeats": repeats,
        "components": components,
        "decoder_and_score_maps_fraction": (medians.get("context_decoder", 0.0) + medians.get("score_maps", 0.0)) / total,
    }


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


# ==================================================================================== random-weight workloads
def calibrate_frozen_batchnorm(model: torch.nn.Module, inputs: List[Dict[str, Any]]) -> int:
    """Set the statistics of every FrozenBatchNorm2d from one forward pass on ``inputs``.

    Detectron2's ResNet with random weights and FrozenBN (mean 0, var 1) lets activations grow by
    orders of magnitude; its RPN then proposes a handful of degenerate boxes and the ROI heads run
    on almost nothing, which would make its FLOPs and times meaningless. Normalising each layer with
    the statistics of its input (as pretrained statistics would) changes no operator and no FLOP,
    only keeps the workload the real one (POST_NMS_TOPK_TEST proposals, DETECTIONS_PER_IMAGE
    detections). CLIP encoders (BatchNorm with zero-initialised last norm of every block) need none.
    Returns the number of layers calibrated.
    """
    from detectron2.layers import FrozenBatchNorm2d

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if not layers:
        return 0

    def pre_hook(module, args):
        x = args[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp(min=module.eps) - module.eps)

    handles = [m.register_forward_pre_hook(pre_hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return len(layers)


def probe_workload(model: torch.nn.Module, inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Proposals (two-stage models) and detections per image of one inference on ``inputs``."""
    seen: Dict[str, Any] = {}
    handle = None
    generator = getattr(model, "proposal_generator", None)
    if generator is not None:
        def hook(_m, _inputs, outputs):
            seen["proposals_per_image"] = [len(p) for p in outputs[0]]
        handle = generator.register_forward_hook(hook)
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        if handle is not None:
            handle.remove()
    return {
        "proposals_per_image": seen.get("proposals_per_image"),
        "detections_per_image": [len(o["instances"]) for o in outputs],
    }


# ==================================================================================== one config
def calibration_size(args, sizes: List[Tuple[int, int]]) -> Tuple[int, int]:
    return sizes[0] if sizes and not (args.skip_train and args.skip_inference) else args.flops_size


def build_benchmark_model(cfg, args, calibration: Tuple[int, int]) -> Tuple[torch.nn.Module, int]:
    """The model of ``cfg`` with the benchmark's seed, on its device, FrozenBN calibrated.
    Returns the model and the number of FrozenBN layers calibrated."""
    from detectron2.modeling import build_model

    torch.manual_seed(args.seed)
    model = build_model(cfg)
    model.to(args.device)
    calibrated = calibrate_frozen_batchnorm(model, make_inputs(synthetic_images(1, calibration, args.seed + 7), args.device))
    return model, calibrated


def benchmark_config(path: Path, args, sizes: List[Tuple[int, int]], peak: Optional[float] = None) -> Dict[str, Any]:
    """Everything measured for one config; ``peak`` (TFLOP/s) adds utilisation figures."""
    device = args.device
    cfg = load_config(path, device, args.opts, args.keep_score_thresh)
    desc = describe_config(cfg)
    name = path.stem
    result: Dict[str, Any] = {"name": name, "config": str(path), **desc, "errors": {}}
    paper = PAPER.get((desc["detector"], desc["encoder"], desc["variant"]))
    result["paper"] = paper

    model, result["frozen_bn_calibrated"] = build_benchmark_model(cfg, args, calibration_size(args, sizes))
    result["params"] = count_parameters(model)
    result["is_denseclip"] = desc["variant"] == "denseclip"
    num_classes = model_num_classes(model, cfg)
    result["num_classes"] = num_classes
    autocast = autocast_context(args)
    result["amp_dtype"] = str(amp_dtype(args)).replace("torch.", "") if args.amp else None

    # ---------------------------------------------------------------- FLOPs
    if not args.skip_flops:
        logger.info("[%s] counting FLOPs at %dx%d", name, *args.flops_size)
        try:
            images = synthetic_images(1, args.flops_size, args.seed)
            start = time.perf_counter()
            flops_inputs = make_inputs(images, device)
            result["flops"] = count_flops(model, flops_inputs)
            result["flops"]["workload"] = probe_workload(model, flops_inputs)
            result["flops"]["size"] = f"{args.flops_size[0]}x{args.flops_size[1]}"
            result["flops"]["count_seconds"] = time.perf_counter() - start
        except Exception as e:  # keep benchmarking the other phases / configs
            logger.exception("[%s] FLOP count failed", name)
            result["errors"]["flops"] = repr(e)
        gc.collect()

    # ---------------------------------------------------------------- timed phases, per size
    result["sizes"] = {}
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        entry: Dict[str, Any] = {}
        result["sizes"][key] = entry
        if not args.skip_train:
            logger.info("[%s] training iterations at %s, batch %d", name, key, args.batch_train)
            try:
                entry["train"] = time_training(model, size, num_classes, args, autocast)
            except Exception as e:
                logger.exception("[%s] training benchmark failed", name)
                result["errors"][f"train@{key}"] = repr(e)
            gc.collect()
        if not args.skip_inference:
            logger.info("[%s] inference at %s", name, key)
            try:
                entry["workload"] = probe_workload(model, make_inputs(synthetic_images(1, size, args.seed), device))
                entry.update(time_inference(model, size, args, autocast))
            except Exception as e:
                logger.exception("[%s] inference benchmark failed", name)
                result["errors"][f"inference@{key}"] = repr(e)
            if args.profile:
                try:
                    images = synthetic_images(1, size, args.seed)
                    entry["profile"] = profile_inference(model, make_inputs(images, device), args.repeats, device, autocast)
                except Exception as e:
                    logger.exception("[%s] profile failed", name)
                    result["errors"][f"profile@{key}"] = repr(e)
            if not args.skip_breakdown:
                try:
                    images = synthetic_images(1, size, args.seed)
                    entry["breakdown"] = breakdown_inference(model, make_inputs(images, device), args.warmup,
                                                             args.repeats, device, autocast)
                except Exception as e:
                    logger.exception("[%s] breakdown failed", name)
                    result["errors"][f"breakdown@{key}"] = repr(e)
            gc.collect()
        if peak is not None and not args.skip_flops:
            try:
                gmacs = (_get(result, "flops", "gflops") if tuple(size) == tuple(args.flops_size)
                         else count_flops(model, make_inputs(synthetic_images(1, size, args.seed), device))["gflops"])
                entry["utilization"] = utilization(entry, gmacs, peak)
            except Exception as e:
                logger.exception("[%s] utilisation failed", name)
                result["errors"][f"utilization@{key}"] = repr(e)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


class TrainStep:
    """One training iteration of ``model`` on a fixed synthetic batch: forward, backward and an
    AdamW step over the trainable parameters (with a GradScaler for fp16 AMP on CUDA).
    Call inside a Detectron2 ``EventStorage``; ``close()`` frees the optimizer state."""

    optimizer_description = "torch.optim.AdamW over the trainable parameters (no gradient clipping)"

    def __init__(self, model: torch.nn.Module, size: Tuple[int, int], num_classes: int, args, autocast: Callable):
        self.model = model
        self.autocast = autocast
        images = synthetic_images(args.batch_train, size, args.seed)
        targets = synthetic_targets(args.batch_train, size, num_classes, args.seed)
        self.batch = make_inputs(images, args.device, targets)
        params = [p for p in model.parameters() if p.requires_grad]
        # Small lr: many steps on the same random batch must stay finite (the time does not depend on it).
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4)
        use_scaler = args.amp and args.device == "cuda" and amp_dtype(args) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.last_losses: Dict[str, float] = {}
        model.train()

    def __call__(self) -> None:
        with self.autocast():
            losses = self.model(self.batch)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None
        self.model.eval()


def time_training(model, size, num_classes, args, autocast) -> Dict[str, Any]:
    from detectron2.utils.events import EventStorage

    step = TrainStep(model, size, num_classes, args, autocast)
    try:
        with EventStorage(0), measure_memory(args.device) as mem:
            timing = time_phase(step, args.warmup, args.repeats, args.device)
    finally:
        step.close()
    timing["batch"] = args.batch_train
    timing["images_per_s"] = args.batch_train * 1000.0 / timing["median_ms"]
    timing["memory"] = mem
    timing["optimizer"] = TrainStep.optimizer_description
    timing["last_losses"] = step.last_losses
    return timing


def time_inference(model, size, args, autocast) -> Dict[str, Any]:
    device = args.device
    model.eval()
    out: Dict[str, Any] = {}
    single = make_inputs(synthetic_images(1, size, args.seed), device)
    many = make_inputs(synthetic_images(args.batch_throughput, size, args.seed), device)
    calls: Dict[str, int] = {}

    with torch.no_grad(), autocast(), count_text_encoder_calls(model) as counter:
        def snapshot(key: str) -> Callable[[], None]:
            def take():
                if counter is not None:
                    calls[key] = counter["calls"]
                    counter["calls"] = 0
            return take

        with measure_memory(device) as mem:
            latency = time_phase(lambda: model(single), args.warmup, args.repeats, device, snapshot("latency_warmup"))
        snapshot("latency_timed")()
        latency["batch"] = 1
        latency["memory"] = mem
        out["inference"] = latency

        with measure_memory(device) as mem:
            tput = time_phase(lambda: model(many), args.warmup, args.repeats, device, snapshot("throughput_warmup"))
        snapshot("throughput_timed")()
        tput["batch"] = args.batch_throughput
        tput["images_per_s"] = args.batch_throughput * 1000.0 / tput["median_ms"]
        # Spread of the throughput: from the quartiles and the slowest / fastest repetitions.
        tput["images_per_s_q1"] = args.batch_throughput * 1000.0 / tput["q3_ms"]
        tput["images_per_s_q3"] = args.batch_throughput * 1000.0 / tput["q1_ms"]
        tput["images_per_s_min"] = args.batch_throughput * 1000.0 / tput["max_ms"]
        tput["images_per_s_max"] = args.batch_throughput * 1000.0 / tput["min_ms"]
        tput["memory"] = mem
        out["throughput"] = tput
    if calls:
        calls["warmup"] = calls["latency_warmup"] + calls["throughput_warmup"]
        calls["timed"] = calls["latency_timed"] + calls["throughput_timed"]
    out["text_encoder_calls"] = calls if calls else None
    out["text_encoder_calls_timed"] = calls.get("timed") if calls else None
    return out


# ==================================================================================== paired A/B rounds
def time_alternating(subject: Callable[[], Any], reference: Callable[[], Any], warmup: int, repeats: int,
                     device: str) -> Dict[str, Any]:
    """Time two workloads in alternating rounds (subject first in even rounds, reference first in
    odd ones); each round gives one subject / reference ratio. A change of the machine's speed
    between rounds (other tenants, clocks) scales both sides of a round alike, so the ratios are
    far steadier than those of phases timed minutes apart."""
    fns = (subject, reference)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: Tuple[List[float], List[float]] = ([], [])
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            synchronize(device)
            start = time.perf_counter()
            fns[i]()
            synchronize(device)
            times[i].append(time.perf_counter() - start)
    return {
        "ratio": summarize_ratios([a / b for a, b in zip(*times)]),
        "subject": summarize(times[0]),
        "reference": summarize(times[1]),
    }


def paired_ratios(subject_path: Path, reference_path: Path, args, sizes: List[Tuple[int, int]]) -> Dict[str, Any]:
    """DenseCLIP / CLIP-baseline time ratios with both models resident, from alternating rounds of
    batch-1 inference and of training iterations, per size (``--paired-repeats`` rounds each)."""
    from detectron2.utils.events import EventStorage

    autocast = autocast_context(args)
    repeats = args.paired_repeats or args.repeats
    cfgs = [load_config(p, args.device, args.opts, args.keep_score_thresh) for p in (subject_path, reference_path)]
    models = [build_benchmark_model(cfg, args, calibration_size(args, sizes))[0] for cfg in cfgs]
    out: Dict[str, Any] = {}
    try:
        for size in sizes:
            entry: Dict[str, Any] = {}
            out[f"{size[0]}x{size[1]}"] = entry
            if not args.skip_inference:
                single = make_inputs(synthetic_images(1, size, args.seed), args.device)
                for m in models:
                    m.eval()
                with torch.no_grad(), autocast():
                    a, b = (lambda m=m: m(single) for m in models)
                    entry["inference"] = time_alternating(a, b, args.warmup, repeats, args.device)
            if not args.skip_train:
                steps = [TrainStep(m, size, model_num_classes(m, cfg), args, autocast) for m, cfg in zip(models, cfgs)]
                try:
                    with EventStorage(0):
                        entry["train"] = time_alternating(steps[0], steps[1], args.warmup, repeats, args.device)
                finally:
                    for step in steps:
                        step.close()
            gc.collect()
    finally:
        del models
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return out


# ==================================================================================== comparisons & targets
def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _get(d: Optional[Dict[str, Any]], *keys) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def find_pairs(results: List[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], Dict[str, Any], str]]:
    """(subject, reference, kind) pairs: DenseCLIP vs its CLIP baseline, and DenseCLIP / CLIP vs
    Detectron2's stock R50-FPN Mask R-CNN."""
    by_name = {r["name"]: r for r in results}
    stock = [r for r in results if r["variant"] == "detectron2"]
    pairs = []
    for r in results:
        if r["variant"] == "denseclip":
            baseline = by_name.get(r["name"].replace("denseclip", "clip"))
            if baseline is None:  # same detector and encoder among the CLIP configs
                baseline = next((b for b in results if b["variant"] == "clip" and b["detector"] == r["detector"]
                                 and b["encoder"] == r["encoder"]), None)
            if baseline is not None:
                pairs.append((r, baseline, "denseclip_vs_clip_baseline"))
        if r["variant"] in ("denseclip", "clip"):
            for s in stock:
                pairs.append((r, s, "vs_detectron2_stock"))
    return pairs


def compare(a: Dict[str, Any], b: Dict[str, Any], kind: str, paired: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Ratios subject / reference from the per-config results, and the paired rounds' ratios
    (``paired_ratios``) where they were measured."""
    comp: Dict[str, Any] = {"subject": a["name"], "reference": b["name"], "kind": kind, "sizes": {}, "paired": paired}
    comp["flops_ratio"] = _ratio(_get(a, "flops", "gflops"), _get(b, "flops", "gflops"))
    comp["params_ratio"] = _ratio(_get(a, "params", "total"), _get(b, "params", "total"))
    comp["params_excluding_frozen_text_ratio"] = _ratio(_get(a, "params", "excluding_frozen_text_encoder"),
                                                       _get(b, "params", "excluding_frozen_text_encoder"))
    comp["trainable_params_ratio"] = _ratio(_get(a, "params", "trainable"), _get(b, "params", "trainable"))
    for size in a.get("sizes", {}):
        sa, sb = a["sizes"][size], b.get("sizes", {}).get(size, {})
        comp["sizes"][size] = {
            "train_time_ratio": _ratio(_get(sa, "train", "median_ms"), _get(sb, "train", "median_ms")),
            "inference_time_ratio": _ratio(_get(sa, "inference", "median_ms"), _get(sb, "inference", "median_ms")),
            "throughput_ratio": _ratio(_get(sa, "throughput", "images_per_s"), _get(sb, "throughput", "images_per_s")),
            "train_memory_ratio": _ratio(_get(sa, "train", "memory", "peak_mb"), _get(sb, "train", "memory", "peak_mb")),
            "inference_memory_ratio": _ratio(_get(sa, "inference", "memory", "peak_mb"),
                                             _get(sb, "inference", "memory", "peak_mb")),
            "throughput_memory_ratio": _ratio(_get(sa, "throughput", "memory", "peak_mb"),
                                              _get(sb, "throughput", "memory", "peak_mb")),
            "train_memory_delta_ratio": _ratio(_get(sa, "train", "memory", "peak_delta_mb"),
                                               _get(sb, "train", "memory", "peak_delta_mb")),
            "inference_memory_delta_ratio": _ratio(_get(sa, "inference", "memory", "peak_delta_mb"),
                                                   _get(sb, "inference", "memory", "peak_delta_mb")),
        }
    return comp


def _check(name: str, value: Optional[float], limit: str, passed: Optional[bool], note: str = "") -> Dict[str, Any]:
    status = "N/A" if passed is None else ("PASS" if passed else "FAIL")
    return {"check": name, "value": value, "target": limit, "status": status, "note": note}


def _target_ratio(comp: Dict[str, Any], size: str, phase: str, separate: Optional[float]) -> Tuple[Optional[float], str]:
    """The ratio a time target is checked on: the paired rounds' median where measured (steady
    under a drifting machine speed), else the ratio of the separately timed phases."""
    paired = _get(comp, "paired", size, phase, "ratio")
    if paired is None:
        return separate, "separate phases"
    return paired["median"], (f"median of {paired['rounds']} alternating rounds (IQR {paired['q1']:.3f}–"
                              f"{paired['q3']:.3f}); separate phases {_fmt(separate, 3)}")


def evaluate_targets(results: List[Dict[str, Any]], comparisons: List[Dict[str, Any]], args) -> List[Dict[str, Any]]:
    checks = []
    for comp in comparisons:
        if comp["kind"] != "denseclip_vs_clip_baseline":
            continue
        label = f"{comp['subject']} / {comp['reference']}"
        for size, s in comp["sizes"].items():
            for phase, what, key, lim in (
                ("inference", "inference", "inference_time_ratio", TARGETS["inference_time_ratio_max"]),
                ("train", "training", "train_time_ratio", TARGETS["train_time_ratio_max"]),
            ):
                v, note = _target_ratio(comp, size, phase, s[key])
                checks.append(_check(f"{what} time ratio {label} @{size}", v, f"<= {lim:.2f}",
                                     None if v is None else v <= lim, note))
    tol = TARGETS["flops_rel_tolerance"]
    for r in results:
        paper = r.get("paper")
        if paper is None or r["variant"] not in ("clip", "denseclip"):
            continue
        gflops = _get(r, "flops", "gflops")
        note = ""
        passed = None
        if gflops is None:
            note = "FLOPs not counted"
        elif tuple(args.flops_size) != PAPER_FLOPS_SIZE:
            note = f"FLOPs counted at {args.flops_size[0]}x{args.flops_size[1]}, the paper's are at 1280x800"
        else:
            passed = abs(gflops / paper["gflops"] - 1.0) <= tol
        checks.append(_check(f"GFLOPs {r['name']} vs paper {paper['gflops']:.0f} G", gflops,
                             f"within {tol:.0%} of {paper['gflops']:.0f}", passed, note))
    for r in results:
        if not r.get("is_denseclip"):
            continue
        for size, entry in r.get("sizes", {}).items():
            calls = entry.get("text_encoder_calls_timed")
            checks.append(_check(f"text encoder calls during timed inference {r['name']} @{size}", calls, "== 0",
                                 None if calls is None else calls == 0))
    return checks


# ==================================================================================== report
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _time_cell(t: Optional[Dict[str, Any]]) -> str:
    if not t:
        return "–"
    return f"{t['median_ms']:.1f} (IQR {t['iqr_ms']:.1f}; {t['min_ms']:.1f}–{t['max_ms']:.1f})"


def _workload_cell(w: Optional[Dict[str, Any]]) -> str:
    if not w:
        return "–"
    props = w.get("proposals_per_image")
    dets = w.get("detections_per_image")
    return f"{'–' if props is None else '/'.join(map(str, props))} / {'/'.join(map(str, dets))}"


def render_markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    a = report["settings"]
    lines = [
        "# DenseCLIP benchmark",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: CPU {m['cpu']} ({m['cpu_count']} logical cores, {m['torch_threads']} torch threads)"
        + (f"; GPU {m['gpu']}" if m.get("gpu") else "; no GPU used"),
        f"- software: torch {m['torch']} (CUDA {m['cuda']}), detectron2 {m['detectron2']}, fvcore {m.get('fvcore', '?')}, "
        f"python {m['python']}, {m['platform']}",
        f"- device {a['device']}, AMP {a['amp_dtype'] or 'off'}, warm-up {a['warmup']}, repeats {a['repeats']}, "
        f"train batch {a['batch_train']}, throughput batch {a['batch_throughput']}, seed {a['seed']}, "
        f"test score threshold {'as configured' if a['keep_score_thresh'] else '0 (100 detections per image)'}",
        "- random weights; synthetic inputs; times in ms: median (IQR; min–max)",
        "",
        "## Parameters and FLOPs",
        "",
        f"FLOPs: fvcore, 1 multiply-add = 1 flop, batch 1 at {a['flops_size']}.",
        "",
        "| config | params (M) | trainable (M) | w/o frozen text (M) | paper params (M) | GFLOPs | paper GFLOPs | proposals / detections | unsupported ops skipped |",  # noqa: E501 (a Markdown table header)
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        p = r["params"]
        paper = r.get("paper") or {}
        unsupported = _get(r, "flops", "unsupported_ops")
        unsupported_txt = ", ".join(f"{k} ×{v}" for k, v in unsupported.items()) if unsupported else ("none" if unsupported == {} else "–")
        lines.append(
            f"| {r['name']} | {p['total'] / 1e6:.2f} | {p['trainable'] / 1e6:.2f} | "
            f"{p['excluding_frozen_text_encoder'] / 1e6:.2f} | {_fmt(paper.get('params_m'), 0)} | "
            f"{_fmt(_get(r, 'flops', 'gflops'))} | {_fmt(paper.get('gflops'), 0)} | "
            f"{_workload_cell(_get(r, 'flops', 'workload'))} | {unsupported_txt} |"
        )
    for size in a["sizes"]:
        lines += [
            "",
            f"## Speed and memory at {size}",
            "",
            "| config | train iter (ms) | inference batch 1 (ms) | throughput (img/s) | peak mem train / infer / throughput (MB) | proposals / detections | text encoder calls (timed) |",  # noqa: E501 (a Markdown table header)
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["results"]:
            e = r.get("sizes", {}).get(size, {})
            tp = e.get("throughput")
            tp_cell = "–" if not tp else f"{tp['images_per_s']:.2f} ({tp['images_per_s_min']:.2f}–{tp['images_per_s_max']:.2f})"
            mems = " / ".join(_fmt(_get(e, k, "memory", "peak_mb"), 0) for k in ("train", "inference", "throughput"))
            calls = e.get("text_encoder_calls_timed")
            lines.append(f"| {r['name']} | {_time_cell(e.get('train'))} | {_time_cell(e.get('inference'))} | "
                         f"{tp_cell} | {mems} | {_workload_cell(e.get('workload'))} | {_fmt(calls)} |")
        method = next((_get(r, "sizes", size, ph, "memory", "method") for r in report["results"]
                       for ph in ("train", "inference") if _get(r, "sizes", size, ph, "memory", "method")), None)
        if method:
            lines += ["", f"Memory: {method}."]
        utils = [(r["name"], _get(r, "sizes", size, "utilization")) for r in report["results"]]
        utils = [(n, u) for n, u in utils if u]
        if utils:
            lines += ["", f"Utilisation of {a['peak_tflops']:.1f} TFLOP/s peak (2 flops per multiply-add; training "
                      "counts 3x the inference FLOPs, an estimate):", "",
                      "| config | GMACs / image | inference TFLOP/s (of peak) | throughput TFLOP/s (of peak) | train TFLOP/s (of peak) |",
                      "|---|---|---|---|---|"]
            for name, u in utils:
                cells = [f"{u[ph]['achieved_tflops']:.2f} ({u[ph]['fraction_of_peak']:.1%})" if ph in u else "–"
                         for ph in ("inference", "throughput", "train")]
                lines.append(f"| {name} | {u['gmacs_per_image']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Ratios (subject / reference)", "",
              "| subject | reference | size | train time | inference time | throughput | train mem | inference mem | FLOPs | params |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        sizes = c["sizes"] or {"–": {}}
        for size, s in sizes.items():
            lines.append(
                f"| {c['subject']} | {c['reference']} | {size} | {_fmt(s.get('train_time_ratio'), 3)} | "
                f"{_fmt(s.get('inference_time_ratio'), 3)} | {_fmt(s.get('throughput_ratio'), 3)} | "
                f"{_fmt(s.get('train_memory_ratio'), 3)} | {_fmt(s.get('inference_memory_ratio'), 3)} | "
                f"{_fmt(c['flops_ratio'], 3)} | {_fmt(c['params_ratio'], 3)} |"
            )
    paired_rows = [(c, size, phase, _get(stats, "ratio"), stats) for c in report["comparisons"]
                   for size, phases in (c.get("paired") or {}).items() for phase, stats in phases.items()]
    if paired_rows:
        lines += ["", "## Paired rounds (subject / reference, both resident, timed in alternation)", "",
                  "| subject | reference | size | phase | ratio: median (IQR; min–max) | rounds | subject ms | reference ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, size, phase, r, stats in paired_rows:
            lines.append(
                f"| {c['subject']} | {c['reference']} | {size} | {phase} | {r['median']:.3f} ({r['q1']:.3f}–{r['q3']:.3f}; "
                f"{r['min']:.3f}–{r['max']:.3f}) | {r['rounds']} | {_time_cell(stats['subject'])} | "
                f"{_time_cell(stats['reference'])} |")
    lines += ["", "## Targets", "", "| check | value | target | status | note |", "|---|---|---|---|---|"]
    for ch in report["checks"]:
        lines.append(f"| {ch['check']} | {_fmt(ch['value'], 3)} | {ch['target']} | **{ch['status']}** | {ch['note']} |")
    breakdowns = [(r["name"], size, e["breakdown"]) for r in report["results"]
                  for size, e in r.get("sizes", {}).items() if e.get("breakdown")]
    if breakdowns:
        lines += ["", "## Inference time per component (batch 1, median ms and share of the total)", ""]
        for name, size, b in breakdowns:
            comps = b["components"]
            lines += [f"**{name} @{size}**", "", "| component | ms | share |", "|---|---|---|"]
            for k, v in comps.items():
                lines.append(f"| {k} | {v['median_ms']:.2f} | {v['fraction']:.1%} |")
            lines.append("")
    profiles = [(r["name"], size, e["profile"]) for r in report["results"]
                for size, e in r.get("sizes", {}).items() if e.get("profile")]
    if profiles:
        lines += ["## Top operators of inference (torch.profiler, batch 1, self time per inference)", ""]
        for name, size, prof in profiles:
            lines += [f"**{name} @{size}** (all operators: {prof['total_self_ms']:.1f} ms)", "",
                      "| operator | self ms | calls |", "|---|---|---|"]
            lines += [f"| {op['op']} | {op['self_ms']:.2f} | {op['calls']} |" for op in prof["ops"]]
            lines.append("")
    flops_parts = [(r["name"], r["flops"]["by_component_gflops"]) for r in report["results"] if r.get("flops")]
    if flops_parts:
        keys = ("image_encoder", "text_encoder", "context_decoder", "backbone_other", "fpn", "proposal_generator",
                "roi_heads", "retinanet_head")
        lines += ["## GFLOPs per module", "", "| config | image encoder | text encoder | context decoder | "
                  "score maps & other backbone | FPN | RPN | ROI heads | RetinaNet head |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, parts in flops_parts:
            lines.append(f"| {name} | " + " | ".join(_fmt(parts.get(k), 2 if k == "backbone_other" else 1)
                                                   for k in keys) + " |")
        lines.append("")
    errors = {r["name"]: r["errors"] for r in report["results"] if r.get("errors")}
    if errors:
        lines += ["## Errors", ""]
        for name, errs in errors.items():
            for phase, err in errs.items():
                lines.append(f"- {name} {phase}: `{err}`")
        lines.append("")
    return "\n".join(lines) + "\n"


def print_summary(report: Dict[str, Any]) -> None:
    print()
    for r in report["results"]:
        parts = [f"{r['name']}: params {r['params']['total'] / 1e6:.2f}M (trainable {r['params']['trainable'] / 1e6:.2f}M)"]
        if r.get("flops"):
            parts.append(f"{r['flops']['gflops']:.1f} GFLOPs@{r['flops']['size']}")
        for size, e in r.get("sizes", {}).items():
            if e.get("train"):
                parts.append(f"train {e['train']['median_ms']:.1f}ms@{size}")
            if e.get("inference"):
                parts.append(f"infer {e['inference']['median_ms']:.1f}ms")
            if e.get("throughput"):
                parts.append(f"{e['throughput']['images_per_s']:.2f} img/s")
            if e.get("text_encoder_calls_timed") is not None:
                parts.append(f"text-encoder calls (timed) {e['text_encoder_calls_timed']}")
        print(", ".join(parts))
    for c in report["comparisons"]:
        bits = [f"FLOPs x{_fmt(c['flops_ratio'], 3)}", f"params x{_fmt(c['params_ratio'], 3)}"]
        for size, s in c["sizes"].items():
            bits.append(f"@{size}: train x{_fmt(s['train_time_ratio'], 3)}, infer x{_fmt(s['inference_time_ratio'], 3)}, "
                        f"throughput x{_fmt(s['throughput_ratio'], 3)}, train mem x{_fmt(s['train_memory_ratio'], 3)}, "
                        f"infer mem x{_fmt(s['inference_memory_ratio'], 3)}")
        for size, phases in (c.get("paired") or {}).items():
            bits += [f"@{size} paired {phase} x{stats['ratio']['median']:.3f}" for phase, stats in phases.items()]
        print(f"{c['subject']} / {c['reference']}: " + "; ".join(bits))
    for ch in report["checks"]:
        print(f"[{ch['status']}] {ch['check']}: {_fmt(ch['value'], 3)} (target {ch['target']}){' - ' + ch['note'] if ch['note'] else ''}")


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.dtype, Path)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ==================================================================================== main
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
    command = "python -m denseclip.benchmark " + " ".join(shlex.quote(a) for a in argv)
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

    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2, default=_json_default)
    if args.output_md:
        Path(args.output_md).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output_md, "w") as f:
            f.write(render_markdown(report))
    print_summary(report)
    if args.output_json or args.output_md:
        print(f"\nwrote {args.output_json or '-'} and {args.output_md or '-'}")
    return report


if __name__ == "__main__":
    main()
