"""Optimizer and learning-rate schedule of the DenseCLIP training recipe (SPEC section 2).

Detectron2 v0.6 builds SGD with per-*module-type* hyper-parameters only; the reference recipe
(mmdetection ``paramwise_cfg``) additionally needs per-*module-path* learning-rate multipliers
(CLIP image encoder 0.1x, text encoder 0x), no weight decay on embeddings, AdamW, and clipping of
the L2 norm of *all* gradients together. This module adds those on top of Detectron2's
``get_default_optimizer_params`` / ``build_lr_scheduler``.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, Iterable, List, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

__all__ = [
    "IMAGE_ENCODER_PREFIXES",
    "TEXT_ENCODER_KEY",
    "LEARNABLE_PROMPT_KEY",
    "NO_DECAY_NAME_KEYS",
    "build_optimizer",
    "get_denseclip_param_groups",
    "build_lr_scheduler",
    "resolve_step_fractions",
    "add_full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

# Qualified-name prefixes of the CLIP image encoder, whose lr is scaled by
# SOLVER.BACKBONE_MULTIPLIER: stock Detectron2 FPN models keep the encoder as the FPN's
# ``bottom_up``; DenseCLIP models keep it as ``backbone.image_encoder``. The FPN itself (lateral and
# output convs, top blocks) is a new layer and trains at the base lr. A ``module.`` prefix (DDP) is
# stripped before matching.
IMAGE_ENCODER_PREFIXES: Tuple[str, ...] = ("backbone.bottom_up.", "backbone.image_encoder.")
# Any parameter whose qualified name contains this belongs to the CLIP text tower, whose lr is
# scaled by SOLVER.TEXT_ENCODER_MULTIPLIER (0 in the reference: frozen) ...
TEXT_ENCODER_KEY = "text_encoder"
# ... except the learnable prompt (CoOp context vectors), whose own (leaf) name contains this: it
# may live inside the text-encoder module (``backbone.text_encoder.context``) but is trained at
# the base lr, as in the reference, where it is a parameter of the detector itself.
LEARNABLE_PROMPT_KEY = "context"
# Name fragments of embedding-like parameters that must not be decayed towards 0: positional
# embeddings, the learnable (CoOp) text context, logit scales and the context decoder's gamma.
# Matched against a parameter's own (leaf) name only, so that e.g. the weights of a
# ``context_decoder`` module are still decayed.
NO_DECAY_NAME_KEYS: Tuple[str, ...] = ("positional_embedding", "context", "logit_scale", "gamma")


def _strip_ddp_prefix(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def _is_no_decay_embedding(name: str, param: torch.nn.Parameter) -> bool:
    """Embeddings: scalars/vectors other than biases (class embeddings, gammas, scales) and named
    embeddings of any rank. Biases are left to SOLVER.WEIGHT_DECAY_BIAS, as in Detectron2 and in the
    reference recipe, which decays them."""
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim <= 1 and leaf != "bias":
        return True
    return any(key in leaf for key in NO_DECAY_NAME_KEYS)


def _is_text_tower(name: str) -> bool:
    return TEXT_ENCODER_KEY in name and LEARNABLE_PROMPT_KEY not in name.rsplit(".", 1)[-1]


def _lr_multiplier(cfg: CfgNode, name: str) -> float:
    if _is_text_tower(name):
        return cfg.SOLVER.TEXT_ENCODER_MULTIPLIER
    if name.startswith(IMAGE_ENCODER_PREFIXES):
        return cfg.SOLVER.BACKBONE_MULTIPLIER
    return 1.0


def get_denseclip_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups of the recipe, merged so that the multi-tensor optimizers stay fast.

    Detectron2's ``get_default_optimizer_params`` decides norm-layer and bias hyper-parameters (it
    only sees module types and leaf parameter names); the qualified name then decides the lr
    multiplier and the embedding weight-decay exemption. Parameters that do not require grad are
    absent (Detectron2 already skips them); text-tower parameters with a 0 multiplier are frozen
    here and left out, so they cost neither gradients, DDP all-reduces nor optimizer state.
    """
    base_lr = cfg.SOLVER.BASE_LR
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    names = {p: _strip_ddp_prefix(n) for n, p in model.named_parameters()}
    per_param: List[Dict[str, Any]] = []
    frozen_text = 0
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for param in group["params"]:
            name = names[param]
            multiplier = _lr_multiplier(cfg, name)
            if multiplier == 0.0 and _is_text_tower(name):
                param.requires_grad_(False)
                frozen_text += param.numel()
                continue
            item = dict(hyper, params=[param], lr=hyper["lr"] * multiplier)
            if _is_no_decay_embedding(name, param):
                item["weight_decay"] = 0.0
            per_param.append(item)
    if frozen_text:
        logger.info(f"Text encoder frozen (SOLVER.TEXT_ENCODER_MULTIPLIER 0): {frozen_text:,} parameters")
    if not per_param:
        raise ValueError("The model has no trainable parameters for the optimizer")
    return reduce_param_groups(per_param)


def add_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the L2 norm of the gradients of
    all its parameters *together* to ``max_norm`` (the reference's ``grad_clip``); Detectron2's
    SOLVER.CLIP_GRADIENTS clips each parameter separately, which changes the update direction."""

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        params: Iterable[torch.Tensor] = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithFullModelGradClip", (optimizer_type,), {"step": step})


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER "AdamW" (reference) or "SGD" over :func:`get_denseclip_param_groups`, with
    full-model clipping (SOLVER.FULL_MODEL_CLIP_GRAD_NORM > 0) and/or Detectron2's per-parameter
    clipping (SOLVER.CLIP_GRADIENTS)."""
    params = get_denseclip_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER
    kwargs: Dict[str, Any]
    if name.lower() == "adamw":
        optimizer_type: Type[torch.optim.Optimizer] = torch.optim.AdamW
        kwargs = {"betas": tuple(cfg.SOLVER.BETAS)}
    elif name.lower() == "sgd":
        optimizer_type = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: expected 'AdamW' or 'SGD', got '{name}'")
    if cfg.SOLVER.FULL_MODEL_CLIP_GRAD_NORM > 0:
        optimizer_type = add_full_model_gradient_clipping(optimizer_type, cfg.SOLVER.FULL_MODEL_CLIP_GRAD_NORM)
    optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)


def resolve_step_fractions(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` whose SOLVER.STEPS are ``round(f * MAX_ITER)`` for f in STEP_FRACTIONS,
    so that one config keeps its schedule shape when MAX_ITER changes (e.g. short runs, or
    REFERENCE_WORLD_SIZE scaling). Steps that collapse (duplicates, 0, or >= MAX_ITER, which the
    multi-step scheduler rejects) are dropped with a warning. Unchanged when the list is empty."""
    fractions = list(cfg.SOLVER.STEP_FRACTIONS)
    if not fractions:
        return cfg
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"SOLVER.STEP_FRACTIONS must lie in (0, 1], got {bad}")
    max_iter = cfg.SOLVER.MAX_ITER
    wanted = [int(round(f * max_iter)) for f in fractions]
    steps = sorted({s for s in wanted if 0 < s < max_iter})
    if len(steps) != len(wanted):
        logger.warning(
            f"SOLVER.STEP_FRACTIONS {fractions} x MAX_ITER {max_iter} = {wanted}: "
            f"keeping distinct steps inside (0, MAX_ITER): {steps}"
        )
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SOLVER.STEPS = tuple(steps)
    if frozen:
        cfg.freeze()
    return cfg


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler._LRScheduler:
    """Detectron2's warm-up + multi-step/cosine scheduler, with SOLVER.STEP_FRACTIONS resolved.

    Detectron2's ``LRMultiplier`` scales each group's own initial lr, so the per-module multipliers
    of :func:`build_optimizer` hold throughout the schedule."""
    cfg = resolve_step_fractions(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        logger.info(f"LR steps: {list(cfg.SOLVER.STEPS)} of {cfg.SOLVER.MAX_ITER} iterations")
    return d2_build_lr_scheduler(cfg, optimizer)
