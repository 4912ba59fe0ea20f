"""Normalisation choices for CLIP image encoders."""
from __future__ import annotations

import torch.nn as nn
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils import comm

NORM_CHOICES = ("BN", "SyncBN", "FrozenBN")


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Convert the BatchNorm layers of a CLIP encoder according to MODEL.CLIP.NORM.

    "SyncBN" synchronises statistics across processes only when there is more than one: a single
    process (CPU tests, 1-GPU runs) keeps plain BatchNorm, which computes the same thing.
    """
    if norm not in NORM_CHOICES:
        raise ValueError(f"MODEL.CLIP.NORM: expected one of {NORM_CHOICES}, got '{norm}'")
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN" and comm.get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients and statistics updates of a sub-network (Detectron2's FREEZE_AT semantics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
