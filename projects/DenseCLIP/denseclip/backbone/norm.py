"""Normalisation choices for image encoders, and synchronised BatchNorm for CPU processes."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.layers.batch_norm import differentiable_all_reduce
from detectron2.utils import comm

logger = logging.getLogger(__name__)

NORM_CHOICES = ("BN", "SyncBN", "FrozenBN")


class CPUSyncBatchNorm(NaiveSyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` for CPU processes (gloo): BatchNorm over the batch of all processes.

    PyTorch's SyncBatchNorm has CUDA kernels only, and DDP refuses it in CPU modules ("SyncBatchNorm
    layers only work with GPU modules"). Detectron2's NaiveSyncBatchNorm runs anywhere, but weights
    each process's statistics equally (or by image count), which equals the statistics of the whole
    batch only when every process holds the same number of pixels (detection batches differ in size),
    and updates ``running_var`` with the biased variance and not ``num_batches_tracked``. This one
    combines the processes' per-channel pixel counts, means and variances into those of all pixels
    (Detectron2's differentiable all-reduce: gradients flow through the global statistics as in
    SyncBatchNorm's backward) and updates the running statistics as SyncBatchNorm does (unbiased variance,
    ``num_batches_tracked``, cumulative average for momentum None). Same parameters and buffers as
    SyncBatchNorm, so checkpoints load in either. One process or eval mode: plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:  # as SyncBatchNorm, which replaces BatchNorm1d/2d/3d alike
            raise ValueError(f"CPUSyncBatchNorm expects N x C x ... input, got {input.dim()}D input")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if comm.get_world_size() == 1 or not self.training:
            return super().forward(input)  # NaiveSyncBatchNorm: plain BatchNorm in these cases
        self._check_input_dim(input)
        x = input.float()  # statistics in float32 under autocast too
        channels = x.shape[1]
        if x.numel() == 0:
            raise ValueError("CPUSyncBatchNorm: empty input in this process (SyncBatchNorm does not support empty inputs)")
        # Each process's stable two-pass mean and variance, combined exactly as SyncBatchNorm does
        # (counts, sums of n*mean, n*mean^2 and n*var over the processes), in float64.
        var_local, mean_local = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        n = float(x.numel() // channels)
        mean_local, var_local = mean_local.double(), var_local.double()
        local = torch.cat([n * mean_local, n * mean_local * mean_local, n * var_local, mean_local.new_full((1,), n)])
        total = differentiable_all_reduce(local)
        count = total[-1].detach()
        if count <= 1:
            raise ValueError(f"CPUSyncBatchNorm: expected more than 1 value per channel over all processes, got {int(count)}")
        mean64 = total[:channels] / count
        var = ((total[channels:2 * channels] + total[2 * channels:-1]) / count - mean64 * mean64).clamp(min=0).float()
        mean = mean64.float()
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var * float(count / (count - 1)), alpha=momentum)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(input.dtype)


def sync_batchnorm_to_cpu(module: nn.Module) -> nn.Module:
    """``module`` with every ``torch.nn.SyncBatchNorm`` replaced by :class:`CPUSyncBatchNorm` holding
    the same parameter and buffer tensors (in place; a SyncBatchNorm ``module`` itself is returned
    replaced), as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does the other way."""
    if isinstance(module, nn.SyncBatchNorm):
        if module.process_group is not None:
            raise ValueError("SyncBatchNorm with its own process group: CPU processes synchronise over all processes only")
        new = CPUSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                               affine=module.affine, track_running_stats=module.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if getattr(module, name) is not None:
                setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = sync_batchnorm_to_cpu(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert_norm(module: nn.Module, norm: str, device: str = "cuda") -> nn.Module:
    """Convert the BatchNorm layers of an image encoder according to MODEL.CLIP.NORM /
    MODEL.ANY_BACKBONE.NORM.

    "SyncBN" synchronises statistics across processes only when there is more than one: a single
    process (CPU tests, 1-GPU runs) keeps plain BatchNorm, which computes the same thing. GPU
    processes get ``torch.nn.SyncBatchNorm``, CPU processes (gloo) :class:`CPUSyncBatchNorm`, which
    computes the same statistics.
    """
    if norm not in NORM_CHOICES:
        raise ValueError(f"MODEL.CLIP.NORM: expected one of {NORM_CHOICES}, got '{norm}'")
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN" and comm.get_world_size() > 1:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return sync_batchnorm_to_cpu(module) if device.startswith("cpu") else module
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients and statistics updates of a sub-network (Detectron2's FREEZE_AT semantics)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
