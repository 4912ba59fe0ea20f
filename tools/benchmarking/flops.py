"""FLOPs with fvcore through Detectron2's FlopCountAnalysis, in total, per component and per
operator."""
from __future__ import annotations

import math
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .components import component_paths, encoder_inside_fpn


def _import_flop_count_analysis():
    """Detectron2's FlopCountAnalysis. detectron2 v0.6's ``detectron2.export`` package imports caffe2
    (gone from PyTorch) in its __init__; the analysis only needs ``detectron2.export.flatten``, which
    is loaded here under a temporary stand-in for the package (removed again afterwards)."""
    try:
        from detectron2.utils.analysis import FlopCountAnalysis

        return FlopCountAnalysis
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("caffe2"):
            raise
    import detectron2

    sys.modules.pop("detectron2.utils.analysis", None)
    stub = types.ModuleType("detectron2.export")
    stub.__path__ = [str(Path(detectron2.__file__).parent / "export")]
    sys.modules["detectron2.export"] = stub
    try:
        from detectron2.export.flatten import TracingAdapter

        stub.TracingAdapter = TracingAdapter
        from detectron2.utils.analysis import FlopCountAnalysis
    finally:
        if sys.modules.get("detectron2.export") is stub:
            del sys.modules["detectron2.export"]
        if getattr(detectron2, "export", None) is stub:
            delattr(detectron2, "export")
    return FlopCountAnalysis


def _sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """aten::scaled_dot_product_attention: Q K^T and A V, as two batched matmuls (multiply-adds).
    fvcore 0.1.5 has no handle for it (PyTorch's MultiheadAttention uses it in inference)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model: torch.nn.Module, inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """fvcore FLOPs (1 multiply-add = 1 flop) of the model in eval mode on ``inputs`` (batch 1)."""
    FlopCountAnalysis = _import_flop_count_analysis()
    model.eval()
    # MultiheadAttention's inference fast path is one fused op (aten::_native_multi_head_attention)
    # that fvcore cannot count; without it, its projections and attention trace as linear + sdpa.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _count_flops(FlopCountAnalysis, model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def flop_analysis(FlopCountAnalysis, model: torch.nn.Module, inputs: Any):
    """Detectron2's FlopCountAnalysis of ``model`` on ``inputs``, quiet, with the sdpa handle."""
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**{"aten::scaled_dot_product_attention": _sdpa_flop_jit})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _count_flops(FlopCountAnalysis, model: torch.nn.Module, inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
    with torch.no_grad():
        model(inputs)  # fills caches (DenseCLIP's text embeddings) so that the trace is the inference path
        analysis = flop_analysis(FlopCountAnalysis, model, inputs)
        total = analysis.total()
        by_module = analysis.by_module()
        by_operator = analysis.by_operator()
        unsupported = analysis.unsupported_ops()

    def module_flops(path: Optional[str]) -> Optional[float]:
        for key in ((path, "model." + path) if path else ()):
            if key in by_module:
                return by_module[key] / 1e9
        return None

    paths = component_paths(model)
    roles = ("image_encoder", "text_encoder", "context_decoder", "fpn", "proposal_generator", "roi_heads",
             "retinanet_head", "sem_seg_head")
    components = {role: module_flops(paths[role]) for role in roles}
    if encoder_inside_fpn(paths) and components["fpn"] is not None:  # Detectron2's FPN runs the encoder
        components["fpn"] -= components["image_encoder"] or 0.0
    # Score maps, preprocessing, anchors...: what runs outside the named modules.
    components["other"] = total / 1e9 - sum(v or 0.0 for v in components.values())
    return {
        "gflops": total / 1e9,
        "by_component_gflops": {k: v for k, v in components.items() if v is not None},
        "by_operator_gflops": {k: v / 1e9 for k, v in sorted(by_operator.items(), key=lambda kv: -kv[1])},
        "unsupported_ops": dict(Counter(unsupported)),
        "counting": "fvcore via detectron2.utils.analysis.FlopCountAnalysis; 1 multiply-add = 1 flop; "
                    "elementwise ops (add, mul, sigmoid, softmax, batch_norm...) ignored as in Detectron2; "
                    "aten::scaled_dot_product_attention counted as 2 batched matmuls",
    }
