"""Test-time strategies of the reference's segmentation models (mmseg 0.19): sliding-window
inference without padding, and multi-scale + flip averaging of class probabilities."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["multi_scale_flip_probabilities", "slide_inference", "sliding_windows"]

Window = Tuple[int, int, int, int]  # y1, y2, x1, x2


def sliding_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> List[Window]:
    """The reference's windows: every ``stride`` pixels, of size ``crop`` clipped to the image and
    shifted back inside it at the far border (so the last window ends at the border); an image
    smaller than ``crop`` along a side is one window of its own size there (it is never padded)."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    if min(h_crop, w_crop, h_stride, w_stride) <= 0:
        raise ValueError(f"TEST.SEM_SEG.CROP_SIZE {tuple(crop)} and STRIDE {tuple(stride)} must be positive")
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * h_stride + h_crop, height), min(j * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def slide_inference(segment: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, num_classes: int,
                    crop: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Logits of ``image`` (B x 3 x H x W, normalised) from :func:`sliding_windows`: ``segment`` maps
    a window (B x 3 x h x w) to its logits (B x K x h x w); overlapping logits are summed and divided
    by the number of windows covering each pixel. Returns B x K x H x W."""
    b, _, h, w = image.shape
    logits = image.new_zeros((b, num_classes, h, w))
    count = image.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in sliding_windows(h, w, crop, stride):
        window_logits = segment(image[:, :, y1:y2, x1:x2])
        if window_logits.shape[-2:] != (y2 - y1, x2 - x1):
            raise ValueError(f"segment() returned logits of size {tuple(window_logits.shape[-2:])} for a "
                             f"{y2 - y1}x{x2 - x1} window")
        logits[:, :, y1:y2, x1:x2] += window_logits
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def multi_scale_flip_probabilities(infer: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                                   output_size: Tuple[int, int], scales: Sequence[float], flip: bool) -> torch.Tensor:
    """Class probabilities (B x K x output_size) averaged over the image resized by each of
    ``scales`` (bilinear) and, with ``flip``, its horizontal mirror: as the reference's aug_test,
    each view's logits (``infer``: B x K x h x w for a B x 3 x h x w view) are resized to
    ``output_size``, turned into probabilities, and averaged."""
    h, w = image.shape[-2:]
    total, views = None, 0
    for scale in scales:
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        scaled = image if size == (h, w) else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            logits = infer(scaled.flip(-1) if mirrored else scaled)
            if mirrored:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
            probabilities = logits.softmax(dim=1)
            total = probabilities if total is None else total + probabilities
            views += 1
    if total is None:
        raise ValueError("TEST.SEM_SEG.SCALES is empty")
    return total / views
