"""Synthetic inputs, the same for every config: noise images with flat rectangles, and for
training a few GT boxes with box-shaped polygon masks (detectors) or label maps (segmentors)."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch


def synthetic_images(num: int, size: Tuple[int, int], seed: int) -> List[torch.Tensor]:
    """num float 3 x H x W images in 0..255: noise plus a few flat rectangles (same for every config)."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num):
        img = torch.randint(0, 256, (3, h, w), generator=g).float() * 0.5
        for _ in range(3):
            x0, y0 = int(torch.randint(0, w // 2, (1,), generator=g)), int(torch.randint(0, h // 2, (1,), generator=g))
            x1, y1 = x0 + w // 3, y0 + h // 3
            img[:, y0:y1, x0:x1] = torch.randint(0, 256, (3, 1, 1), generator=g).float()
        images.append(img)
    return images


def synthetic_targets(num: int, size: Tuple[int, int], num_classes: int, seed: int):
    """A few GT boxes per image with box-shaped polygon masks."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    w, h = size
    g = torch.Generator().manual_seed(seed + 1)
    targets = []
    for i in range(num):
        boxes = []
        for _ in range(3):
            x0 = float(torch.randint(0, w // 2, (1,), generator=g))
            y0 = float(torch.randint(0, h // 2, (1,), generator=g))
            bw = float(torch.randint(max(w // 8, 4), w // 2, (1,), generator=g))
            bh = float(torch.randint(max(h // 8, 4), h // 2, (1,), generator=g))
            boxes.append([x0, y0, min(x0 + bw, w - 1.0), min(y0 + bh, h - 1.0)])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor([(3 * i + k) % num_classes for k in range(len(boxes))], dtype=torch.int64)
        inst.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes])
        targets.append(inst)
    return targets


def synthetic_sem_seg(num: int, size: Tuple[int, int], num_classes: int, seed: int) -> List[torch.Tensor]:
    """H x W int64 label maps: the class of a few rectangles over a background class, a band of
    ignored pixels (255) at the bottom, as padded crops have."""
    w, h = size
    g = torch.Generator().manual_seed(seed + 1)
    labels = []
    for i in range(num):
        label = torch.full((h, w), i % num_classes, dtype=torch.int64)
        for k in range(3):
            x0, y0 = int(torch.randint(0, w // 2, (1,), generator=g)), int(torch.randint(0, h // 2, (1,), generator=g))
            label[y0:y0 + h // 3, x0:x0 + w // 3] = (3 * i + k + 1) % num_classes
        label[-max(h // 16, 1):] = 255
        labels.append(label)
    return labels


def make_inputs(images: List[torch.Tensor], device: str, targets=None) -> List[Dict[str, Any]]:
    """Detectron2's inputs; ``targets``: Instances (detectors) or label maps ("sem_seg", segmentors)."""
    batch = []
    for i, img in enumerate(images):
        item = {"image": img.to(device), "height": img.shape[1], "width": img.shape[2]}
        if targets is not None:
            item["sem_seg" if isinstance(targets[i], torch.Tensor) else "instances"] = targets[i]
        batch.append(item)
    return batch

