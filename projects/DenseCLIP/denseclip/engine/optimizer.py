"""Optimizer and learning-rate schedule of the DenseCLIP training recipe.

Detectron2 v0.6 builds SGD with per-*module-type* hyper-parameters only; the reference recipe
(mmdetection ``paramwise_cfg``) additionally needs per-*module-path* learning-rate multipliers
(CLIP image encoder 0.1x, text encoder 0x), no weight decay on embeddings, AdamW, and clipping of
the L2 norm of *all* gradients together. This module adds those on top of Detectron2's
``get_default_optimizer_params`` / ``build_lr_scheduler``.
"""
from __future__ import annotations

import itertools
import logging
import re
from typing import Any, Dict, Iterable, List, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch.nn.parallel import DistributedDataParallel

from ..config_building import resolve_step_fractions
from .poly_schedule import build_warmup_poly_lr

__all__ = [
    "NO_DECAY_NAME_KEYS",
    "build_optimizer",
    "get_denseclip_param_groups",
    "model_parameter_groups",
    "build_lr_scheduler",
    "add_full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

# Name fragments of embedding-like parameters that must not be decayed towards 0: positional
# embeddings, the learnable (CoOp) text context, logit scales and the context decoder's gamma.
# Matched against a parameter's own (leaf) name only, so that e.g. the weights of a
# ``context_decoder`` module are still decayed.
NO_DECAY_NAME_KEYS: Tuple[str, ...] = ("positional_embedding", "context", "logit_scale", "gamma")

# SOLVER.WEIGHT_DECAY_EXEMPTIONS "reference": what mmcv's custom_keys {backbone, text_encoder, norm}
# exempt in the reference's segmentation recipe. Its keys are matched longest first and a parameter
# takes the first matching key only, so "norm" never reaches the backbone or the text encoder, and
# outside them only the context decoder's LayerNorms norm1-3 have "norm" in their (mmseg) names.
_REFERENCE_NO_DECAY = re.compile(r"(^|\.)context_decoder\.decoder\.\d+\.norm[123]\.")
WEIGHT_DECAY_EXEMPTIONS = ("embeddings", "reference")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def model_parameter_groups(model: torch.nn.Module) -> Dict[str, List[Tuple[str, torch.nn.Parameter]]]:
    """Parameters by role in the recipe: "image_encoder", "text_tower", "text_prompt", "rest".

    A DenseCLIP model (one with a ``text_side``) has its image encoder as ``backbone`` and CLIP's
    text tower and the learnable text prompt in its text side. In Detectron2's own meta-architectures
    (the CLIP baselines, the stock R50) the image encoder is the FPN's bottom-up, or the whole
    backbone when it has no FPN. Everything else (context decoder, gamma, FPN, heads) is "rest", as
    is a model without a backbone.
    """
    model = _unwrap(model)
    backbone = getattr(model, "backbone", None)
    text_side = getattr(model, "text_side", None)
    encoder = backbone if text_side is not None else getattr(backbone, "bottom_up", backbone)
    roles = {id(p): "image_encoder" for p in encoder.parameters()} if encoder is not None else {}
    if text_side is not None:
        roles.update({id(p): "text_tower" for p in text_side.prompt_encoder.clip_text.parameters()})
        for prompt in (text_side.prompt_encoder.context, getattr(text_side, "context_queries", None)):
            if prompt is not None:  # the learnable context, or the queries of pre-model prompting
                roles[id(prompt)] = "text_prompt"
    groups: Dict[str, List[Tuple[str, torch.nn.Parameter]]] = {k: [] for k in ("image_encoder", "text_tower", "text_prompt", "rest")}
    for name, param in model.named_parameters():
        groups[roles.get(id(param), "rest")].append((name, param))
    return groups


def _is_no_decay_embedding(name: str, param: torch.nn.Parameter) -> bool:
    """Embeddings: scalars/vectors other than biases (class embeddings, gammas, scales) and named
    embeddings of any rank. Biases are left to SOLVER.WEIGHT_DECAY_BIAS, as in Detectron2 and in the
    reference recipe, which decays them."""
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim <= 1 and leaf != "bias":
        return True
    return any(key in leaf for key in NO_DECAY_NAME_KEYS)


def _role_multipliers(cfg: CfgNode) -> Dict[str, float]:
    return {
        "image_encoder": cfg.SOLVER.BACKBONE_MULTIPLIER,
        "text_tower": cfg.SOLVER.TEXT_ENCODER_MULTIPLIER,
        "text_prompt": 1.0,
        "rest": 1.0,
    }


def get_denseclip_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups of the recipe, merged so that the multi-tensor optimizers stay fast.

    Detectron2's ``get_default_optimizer_params`` decides norm-layer and bias hyper-parameters (it
    only sees module types and leaf parameter names); the parameter's role
    (:func:`model_parameter_groups`) then decides the lr multiplier, and its name the weight-decay
    exemptions of SOLVER.WEIGHT_DECAY_EXEMPTIONS (embeddings, or the reference's segmentation rule).
    Frozen parameters (``requires_grad`` False: the text tower unless SOLVER.TEXT_ENCODER_MULTIPLIER > 0,
    frozen stages) are absent, as in Detectron2.
    """
    groups = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    exemptions = cfg.SOLVER.WEIGHT_DECAY_EXEMPTIONS
    if exemptions not in WEIGHT_DECAY_EXEMPTIONS:
        raise ValueError(f"SOLVER.WEIGHT_DECAY_EXEMPTIONS: expected one of {WEIGHT_DECAY_EXEMPTIONS}, got '{exemptions}'")
    exempt = _is_no_decay_embedding if exemptions == "embeddings" else lambda name, _: bool(_REFERENCE_NO_DECAY.search(name))
    multipliers = _role_multipliers(cfg)
    role_of: Dict[int, Tuple[str, str]] = {}
    for role, params in model_parameter_groups(model).items():
        for name, param in params:
            role_of[id(param)] = (role, name)
    per_param: List[Dict[str, Any]] = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for param in group["params"]:
            role, name = role_of[id(param)]
            if multipliers[role] == 0.0:
                raise ValueError(
                    f"Parameter '{name}' ({role}) is trainable but its learning-rate multiplier is 0: freeze it "
                    "in the model instead (the text tower follows SOLVER.TEXT_ENCODER_MULTIPLIER; "
                    "MODEL.CLIP.FREEZE_AT freezes image-encoder stages)"
                )
            item = dict(hyper, params=[param], lr=hyper["lr"] * multipliers[role])
            if exempt(name, param):
                item["weight_decay"] = 0.0
            per_param.append(item)
    if not per_param:
        raise ValueError("The model has no trainable parameters for the optimizer")
    return reduce_param_groups(per_param)


def add_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the norm of the gradients of all
    its parameters *together* to ``max_norm`` (the reference's ``grad_clip``); Detectron2's
    CLIP_TYPE "norm" clips each parameter separately, which changes the update direction."""

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        params: Iterable[torch.Tensor] = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithFullModelGradClip", (optimizer_type,), {"step": step})


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER "AdamW" (reference) or "SGD" over :func:`get_denseclip_param_groups`, with
    Detectron2's SOLVER.CLIP_GRADIENTS: CLIP_TYPE "full_model" (as in Detic and Mask2Former; the
    recipe: the norm of all gradients together clipped to CLIP_VALUE, of type NORM_TYPE), or
    Detectron2's per-parameter "value" / "norm"."""
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
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        # Detectron2 v0.6's maybe_add_gradient_clipping knows only "value" and "norm".
        optimizer_type = add_full_model_gradient_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler._LRScheduler:
    """Detectron2's warm-up + multi-step/cosine scheduler, with SOLVER.STEP_FRACTIONS resolved, or
    the segmentation recipe's poly schedule (SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR", :mod:`.poly_schedule`).

    Detectron2's ``LRMultiplier`` scales each group's own initial lr, so the per-module multipliers
    of :func:`build_optimizer` hold throughout the schedule."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
        return build_warmup_poly_lr(cfg, optimizer)
    cfg = resolve_step_fractions(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        logger.info(f"LR steps: {list(cfg.SOLVER.STEPS)} of {cfg.SOLVER.MAX_ITER} iterations")
    return d2_build_lr_scheduler(cfg, optimizer)
