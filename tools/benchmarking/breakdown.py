"""Per-component inference time from forward hooks: preprocess, image encoder, attention pool,
text encoder, context decoder, score maps, FPN, heads, other."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from .components import component_paths, encoder_inside_fpn, get_submodule
from .timing import synchronize


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
    paths = component_paths(model)
    stock_fpn = encoder_inside_fpn(paths)  # Detectron2's FPN: the encoder runs inside it, no score maps
    timer = ComponentTimer(device)
    timer.watch("model", model)
    for role, path in paths.items():
        if path is not None:
            timer.watch(role, get_submodule(model, path))

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
                if stock_fpn:
                    text_and_scores = 0.0
                else:
                    text_and_scores = (s["fpn"] - e["image_encoder"]) - d.get("text_encoder", 0.0) - d.get("context_decoder", 0.0)
                parts = {
                    "preprocess": s["image_encoder"] - s["model"],
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
    present = {role: paths[role] is not None
               for role in ("text_encoder", "context_decoder", "proposal_generator", "roi_heads", "retinanet_head")}
    present.update(attention_pool=paths["last_stage"] is not None, score_maps=not stock_fpn)
    components = {k: {"median_ms": v, "fraction": v / total}
                  for k, v in medians.items() if k == "total" or present.get(k, True)}
    return {
        "method": "forward pre/post hooks with wall-clock timestamps"
                  + (" (torch.cuda.synchronize at every hook)" if device == "cuda" else ""),
        "repeats": repeats,
        "components": components,
        "decoder_and_score_maps_fraction": (medians.get("context_decoder", 0.0) + medians.get("score_maps", 0.0)) / total,
    }
