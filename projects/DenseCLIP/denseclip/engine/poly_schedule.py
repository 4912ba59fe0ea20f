"""The segmentation recipe's learning-rate schedule: mmcv's "poly" policy with linear warm-up.

Detectron2 v0.6 has no poly schedule (``WarmupPolyLR`` is upstream-only), and fvcore's
``PolynomialDecayParamScheduler`` gives one multiplier for every parameter group, whereas mmcv's
minimum lr is absolute: each group decays from its own initial lr towards the same ``min_lr``
(``(lr0 - min_lr) * (1 - it / max_iter) ** power + min_lr``), which no shared multiplier expresses
when the groups start at different rates (backbone x0.1). Warm-up multiplies that by Detectron2's
(= mmcv's "linear") factor ``warmup_factor * (1 - a) + a``, ``a = it / warmup_iters``.
"""
from __future__ import annotations

from typing import List

import torch
from detectron2.config import CfgNode

__all__ = ["WarmupPolyLR", "build_warmup_poly_lr"]


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Per-group lr at iteration ``it`` (0-based, the lr the step of iteration ``it`` uses)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, *, power: float = 0.9, min_lr: float = 0.0,
                 warmup_iters: int = 0, warmup_factor: float = 1.0, warmup_method: str = "linear", last_epoch: int = -1):
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive for the poly schedule, got {max_iter}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD: expected 'linear' or 'constant', got '{warmup_method}'")
        self.max_iter = max_iter
        self.power = power
        self.min_lr = min_lr
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _warmup(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = it / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def get_lr(self) -> List[float]:
        it = min(self.last_epoch, self.max_iter)
        decay = (1 - it / self.max_iter) ** self.power
        warmup = self._warmup(it)
        return [((base - self.min_lr) * decay + self.min_lr) * warmup for base in self.base_lrs]


def build_warmup_poly_lr(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> WarmupPolyLR:
    s = cfg.SOLVER
    return WarmupPolyLR(optimizer, s.MAX_ITER, power=s.POLY_LR_POWER, min_lr=s.POLY_LR_MIN,
                        warmup_iters=s.WARMUP_ITERS, warmup_factor=s.WARMUP_FACTOR, warmup_method=s.WARMUP_METHOD)
