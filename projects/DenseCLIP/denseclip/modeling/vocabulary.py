"""Where a model's class names come from."""
from __future__ import annotations

from typing import List

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog


def resolve_class_names(cfg: CfgNode) -> List[str]:
    """MODEL.DENSECLIP.CLASS_NAMES if set, else the thing_classes of DATASETS.TRAIN[0] (or
    DATASETS.TEST[0] for evaluation-only configs)."""
    if cfg.MODEL.DENSECLIP.CLASS_NAMES:
        return list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    for dataset in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        names = MetadataCatalog.get(dataset).get("thing_classes", None)
        if names:
            return list(names)
    raise ValueError(
        "Cannot determine the class names: set MODEL.DENSECLIP.CLASS_NAMES, or register "
        f"DATASETS.TRAIN[0] ({list(cfg.DATASETS.TRAIN)[:1]}) with metadata thing_classes"
    )
