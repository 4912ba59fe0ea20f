"""Where a config's vocabulary (class names) comes from; names are checked by
:func:`denseclip.text.validate_vocabulary`, the one validator."""
from __future__ import annotations

import logging
from typing import List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..text import validate_vocabulary

logger = logging.getLogger(__name__)


def dataset_class_names(dataset_name: str) -> List[str]:
    """``thing_classes`` of a registered dataset. As Detectron2's loaders do, a dataset whose
    metadata is only filled when it is loaded (``register_coco_instances``) is loaded once."""
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get("thing_classes", None) and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)
    return list(metadata.get("thing_classes", None) or [])


def resolve_vocabulary(cfg: CfgNode) -> None:
    """Write the vocabulary into ``cfg`` (unfrozen): MODEL.DENSECLIP.CLASS_NAMES, when empty, from
    the thing_classes of DATASETS.TRAIN[0] (DATASETS.TEST[0] for evaluation-only configs), and the
    heads' NUM_CLASSES from its size. The dumped config then records the class names."""
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    if not names:
        for dataset in list(cfg.DATASETS.TRAIN)[:1] or list(cfg.DATASETS.TEST)[:1]:
            names = dataset_class_names(dataset)
            if names:
                logger.info("Vocabulary: the %d thing_classes of dataset '%s'", len(names), dataset)
        if not names:
            raise ValueError(
                "Cannot determine the class names: set MODEL.DENSECLIP.CLASS_NAMES, or register "
                f"DATASETS.TRAIN[0] ({list(cfg.DATASETS.TRAIN)[:1]}) with metadata thing_classes"
            )
    validate_vocabulary(names)
    cfg.MODEL.DENSECLIP.CLASS_NAMES = names
    for key, node in (("MODEL.ROI_HEADS", cfg.MODEL.ROI_HEADS), ("MODEL.RETINANET", cfg.MODEL.RETINANET)):
        if node.NUM_CLASSES != len(names):
            logger.info("%s.NUM_CLASSES set to %d, the size of the vocabulary (was %d)", key, len(names), node.NUM_CLASSES)
            node.NUM_CLASSES = len(names)


def check_vocabulary_fits_datasets(cfg: CfgNode) -> None:
    """For training and evaluation: the annotations' class ids index the dataset's own classes, so a
    vocabulary of another size (e.g. a run's config.yaml reused on other data, with its old
    MODEL.DENSECLIP.CLASS_NAMES) cannot label them. Renamed prompts of the same count are fine."""
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    for key, datasets in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for dataset in datasets:
            if dataset not in DatasetCatalog.list():
                continue
            dataset_names = dataset_class_names(dataset)
            if names and dataset_names and len(dataset_names) != len(names):
                raise ValueError(
                    f"MODEL.DENSECLIP.CLASS_NAMES has {len(names)} names but {key} '{dataset}' has {len(dataset_names)} "
                    f"classes ({', '.join(dataset_names[:5])}{', ...' if len(dataset_names) > 5 else ''}): set "
                    "MODEL.DENSECLIP.CLASS_NAMES [] to take the dataset's names (renamed prompts must keep the count)"
                )


def configured_vocabulary(cfg: CfgNode) -> List[str]:
    """The vocabulary a model is built with: MODEL.DENSECLIP.CLASS_NAMES, consistent with NUM_CLASSES."""
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    if not names:
        raise ValueError(
            "MODEL.DENSECLIP.CLASS_NAMES is empty: build the config with denseclip.engine.build_config "
            "(which takes the class names from DATASETS.TRAIN) or set the class names"
        )
    validate_vocabulary(names)
    head_key = "MODEL.RETINANET" if cfg.MODEL.META_ARCHITECTURE.endswith("RetinaNet") else "MODEL.ROI_HEADS"
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES if head_key == "MODEL.RETINANET" else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if num_classes != len(names):
        raise ValueError(
            f"{head_key}.NUM_CLASSES is {num_classes} but MODEL.DENSECLIP.CLASS_NAMES has {len(names)} names"
        )
    return names
