"""Normalisation choices for CLIP image encoders."""
from __future__ import annotations

import logging

import torch.nn as nn
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.utils import comm

logger = logging.getLogger(__name__)

NORM_CHOICES = ("BN", "SyncBN", "FrozenBN")


def convert_norm(module: nn.Module, norm: str, device: str = "cuda") -> nn.Module:
    """Convert the BatchNorm layers of a CLIP encoder according to MODEL.CLIP.NORM.

    "SyncBN" synchronises statistics across processes only when there is more than one: a single
    process (CPU tests, 1-GPU runs) keeps plain BatchNorm, which computes the same thing. PyTorch's
    SyncBatchNorm runs on GPUs only, so CPU processes (gloo) get Detectron2's NaiveSyncBatchNorm,
    which synchronises the same statistics with all_reduce.
    """
    if norm not in NORM_CHOICES:
        raise ValueError(f"MODEL.CLIP.NORM: expected one of {NORM_CHOICES}, got '{norm}'")
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN" and comm.get_world_size() > 1:
        if device.startswith("cpu"):
            replaced = _batchnorm_to_naive_sync(module)
            logger.info("CPU processes: %d BatchNorm layers -> NaiveSyncBatchNorm (gloo)", replaced)
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def _batchnorm_to_naive_sync(module: nn.Module) -> int:
    """Replace the BatchNorm2d children of ``module`` in place; returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = NaiveSyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += _batchnorm_to_naive_sync(child)
    return replaced


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients and statistics updates of a sub-network (Detectron2's FREEZE_AT semantics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
