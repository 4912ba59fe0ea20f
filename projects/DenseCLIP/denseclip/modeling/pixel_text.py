"""Pixel-text score maps and DenseCLIP's auxiliary pixel-text loss."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances


def pixel_text_score_map(dense: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarity of every location with every class, divided by the temperature tau.

    Computed in float32 also under autocast: the logits reach 1 / tau (14.3) and feed a BCE loss and
    the FPN, and a K x D by D x HW product costs nothing next to the encoder.

    Args:
        dense: B x D x H x W dense CLIP embeddings.
        text: B x K x D (per-image, context-refined) or K x D text embeddings.
    Returns:
        B x K x H x W float32 score maps, bounded by 1 / tau in absolute value.
    """
    with torch.autocast(dense.device.type, enabled=False):
        dense = F.normalize(dense.float(), dim=1)
        text = F.normalize(text.float(), dim=-1)
        if text.dim() == 2:
            return torch.einsum("bchw,kc->bkhw", dense, text) / tau
        return torch.einsum("bchw,bkc->bkhw", dense, text) / tau


def box_target_maps(
    instances: List[Instances], num_classes: int, size: Tuple[int, int], stride: int = 4
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Targets of the pixel-text loss, as in the reference: each GT box filled with 1 in its class
    channel at the given stride, and a weight map that is 1 inside the union of all boxes (the
    background outside every box is ignored, since box-filled targets are not masks).

    Returns:
        target (B x K x h x w) and weight (B x K x h x w, the union expanded over classes).
    """
    h, w = size
    if not instances:
        return torch.zeros(0, num_classes, h, w), torch.zeros(0, num_classes, h, w)
    device = instances[0].gt_boxes.device
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    targets, weights = [], []
    # Tensor ops only (no per-box Python loop reading coordinates): no host-device sync on GPU.
    for inst in instances:
        boxes = (inst.gt_boxes.tensor / stride).long()
        x0, x1 = (boxes[:, i].clamp(0, w - 1)[:, None, None] for i in (0, 2))
        y0, y1 = (boxes[:, i].clamp(0, h - 1)[:, None, None] for i in (1, 3))
        inside = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).flatten(1).float()  # N x hw
        labels = F.one_hot(inst.gt_classes.to(device), num_classes).float()  # N x K
        targets.append((labels.t() @ inside).clamp_(max=1.0).view(num_classes, h, w))
        weights.append(inside.sum(dim=0).clamp_(max=1.0).view(1, h, w))
    return torch.stack(targets), torch.stack(weights).expand(-1, num_classes, -1, -1)


def pixel_text_loss(score_map: torch.Tensor, instances: List[Instances], image_size: Tuple[int, int]) -> torch.Tensor:
    """BCE-with-logits between the stride-4 upsampled score maps and box-filled targets, summed over
    the weighted (inside-a-box) class-pixel pairs and divided by their number.

    Args:
        score_map: B x K x h x w pixel-text scores (logits).
        instances: ground truth per image (gt_boxes in padded-input coordinates, gt_classes).
        image_size: (H, W) of the padded input batch.
    """
    stride = 4
    size = (image_size[0] // stride, image_size[1] // stride)
    with torch.autocast(score_map.device.type, enabled=False):  # float32, also under autocast
        logits = F.interpolate(score_map.float(), size=size, mode="bilinear", align_corners=False)
        target, weight = box_target_maps(instances, score_map.shape[1], size, stride)
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        # An image batch without any box contributes no loss (rather than a division by zero).
        return loss / weight.sum().clamp(min=1.0)


def score_map_probabilities(
    logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    chunk: int = 8,
) -> torch.Tensor:
    """Score-map logits of one image (K x h x w, computed on an input padded to ``padded_size``) as
    probabilities aligned with the original image: bilinearly upsampled to the padded size, cropped
    to the ``image_size`` the image had inside the padding (top-left), resized to ``output_size``
    and passed through a sigmoid. Returns K x H x W float32; classes are processed ``chunk`` at a
    time to bound memory at large padded sizes."""
    out = logits.new_empty((logits.shape[0], int(output_size[0]), int(output_size[1])), dtype=torch.float32)
    for start in range(0, logits.shape[0], chunk):
        maps = logits[start : start + chunk][None].float()
        maps = F.interpolate(maps, size=tuple(padded_size), mode="bilinear", align_corners=False)
        maps = maps[..., : image_size[0], : image_size[1]]
        maps = F.interpolate(maps, size=(int(output_size[0]), int(output_size[1])), mode="bilinear", align_corners=False)
        out[start : start + maps.shape[1]] = maps[0].sigmoid()
    return out
