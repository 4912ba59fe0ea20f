"""Pixel-text score maps and DenseCLIP's auxiliary pixel-text loss."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances


def pixel_text_score_map(dense: torch.Tensor, text: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarity of every location with every class, divided by the temperature tau.

    Args:
        dense: B x D x H x W dense CLIP embeddings.
        text: B x K x D (per-image, context-refined) or K x D text embeddings.
    Returns:
        B x K x H x W score maps, bounded by 1 / tau in absolute value.
    """
    dense = F.normalize(dense, dim=1)
    text = F.normalize(text, dim=-1)
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
    device = instances[0].gt_boxes.device if len(instances) else torch.device("cpu")
    target = torch.zeros(len(instances), num_classes, h, w, device=device)
    weight = torch.zeros(len(instances), 1, h, w, device=device)
    for i, inst in enumerate(instances):
        boxes = (inst.gt_boxes.tensor / stride).long()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), inst.gt_classes.tolist()):
            target[i, label, y0:y1, x0:x1] = 1.0
            weight[i, :, y0:y1, x0:x1] = 1.0
    return target, weight.expand(-1, num_classes, -1, -1)


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
    logits = F.interpolate(score_map, size=size, mode="bilinear", align_corners=False)
    target, weight = box_target_maps(instances, score_map.shape[1], size, stride)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    # An image batch without any box contributes no loss (rather than a division by zero).
    return loss / weight.sum().clamp(min=1.0)
