"""How far an export's predictions are from the PyTorch model's: the figures the parity tests, the
export command (--sample-image) and the benchmark report."""
from __future__ import annotations

from typing import Any, Dict

import torch


def compare_predictions(expected: Dict[str, Any], actual: Dict[str, Any]) -> Dict[str, Any]:
    """Detections (``instances``, in the same order: sorted by score) and semantic segmentation
    (``sem_seg``) of two predictions of the same image.

    Returns ``detections`` (both counts), ``labels_equal``, ``max_box_diff`` (px), ``max_score_diff``,
    ``min_mask_iou`` (1.0 without masks) for instances; ``argmax_agreement`` (fraction of pixels
    with the same class) for sem_seg.
    """
    report: Dict[str, Any] = {}
    if "instances" in expected:
        a, b = expected["instances"].to("cpu"), actual["instances"].to("cpu")
        report["detections"] = (len(a), len(b))
        same = len(a) == len(b)
        report["labels_equal"] = same and torch.equal(a.pred_classes, b.pred_classes)
        if same and len(a):
            report["max_box_diff"] = (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max().item()
            report["max_score_diff"] = (a.scores - b.scores).abs().max().item()
        elif same:
            report["max_box_diff"] = report["max_score_diff"] = 0.0
        else:
            report["max_box_diff"] = report["max_score_diff"] = float("inf")
        report["min_mask_iou"] = 1.0
        if same and len(a) and a.has("pred_masks"):
            ma, mb = a.pred_masks.flatten(1).bool(), b.pred_masks.flatten(1).bool()
            union, inter = (ma | mb).sum(1), (ma & mb).sum(1)
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))  # both empty: equal
            report["min_mask_iou"] = iou.min().item()
    if "sem_seg" in expected:
        labels_a, labels_b = expected["sem_seg"].argmax(0).cpu(), actual["sem_seg"].argmax(0).cpu()
        report["argmax_agreement"] = (labels_a == labels_b).float().mean().item()
    return report
