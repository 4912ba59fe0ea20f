"""Random-weight models with a realistic workload: the benchmark's model builder, FrozenBN
calibration, and the proposals / detections a model actually processes."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from .inputs import make_inputs, synthetic_images


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
        # Semantic segmentors output one label map per image: no detections.
        "detections_per_image": [len(o["instances"]) for o in outputs] if "instances" in outputs[0] else None,
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

