"""Where a model's vocabulary (class names) and its heads' class count come from when the model is
built without one (:func:`~.composition.build_denseclip_model`'s ``vocabulary``): one function, one
order. The meta-architectures' ``from_config`` call it (as MaskFormer reads its dataset's metadata),
so a plain ``get_cfg() -> add_denseclip_config -> merge_from_file -> build_model`` works.

A dataset registered by this project (:mod:`denseclip.data`) carries its class names in its metadata
from registration, so resolving a vocabulary reads no dataset file; only a dataset registered
elsewhere without them (Detectron2's ``register_coco_instances``) is loaded once, as Detectron2's
own builders would."""
from __future__ import annotations

import logging
from typing import List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

# Metadata field of a dataset's class names, by the kind of classes a model predicts: detectors
# predict things, semantic segmentation models stuff (Detectron2's conventions).
CLASS_KINDS = {"thing": "thing_classes", "stuff": "stuff_classes"}
# Meta-architectures whose vocabulary comes from vocabulary_from_config, and the kind of their classes.
VOCABULARY_META_ARCHITECTURES = {"DenseCLIPRCNN": "thing", "DenseCLIPRetinaNet": "thing", "DenseCLIPSemanticSegmentor": "stuff"}


def dataset_class_names(dataset_name: str, kind: str = "thing") -> List[str]:
    """``thing_classes`` (or ``stuff_classes``) of a registered dataset. As Detectron2's loaders do,
    a dataset whose metadata is only filled when it is loaded (``register_coco_instances``) is
    loaded once."""
    field = CLASS_KINDS[kind]
    metadata = MetadataCatalog.get(dataset_name)
    if not metadata.get(field, None) and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)
    return list(metadata.get(field, None) or [])


def vocabulary_from_config(cfg: CfgNode, kind: str = "thing") -> List[str]:
    """The class names a model of ``cfg`` is built with: MODEL.DENSECLIP.CLASS_NAMES, otherwise the
    ``{kind}_classes`` of the metadata of DATASETS.TRAIN[0]. ``cfg`` is only read (it may be
    frozen). The names are validated where they enter the model (its text side)."""
    if kind not in CLASS_KINDS:
        raise ValueError(f"kind must be one of {sorted(CLASS_KINDS)}, got {kind!r}")
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    if names:
        return names
    train = list(cfg.DATASETS.TRAIN)[:1]
    if train:
        names = dataset_class_names(train[0], kind)
        if names:
            logger.info("Vocabulary: the %d %s of dataset '%s'", len(names), CLASS_KINDS[kind], train[0])
            return names
    raise ValueError(
        "Cannot determine the class names: set MODEL.DENSECLIP.CLASS_NAMES, or set DATASETS.TRAIN to a "
        f"registered dataset whose metadata has {CLASS_KINDS[kind]} (DATASETS.TRAIN is {tuple(cfg.DATASETS.TRAIN)}"
        + (f"; '{train[0]}' has no {CLASS_KINDS[kind]}" if train else "") + ")"
    )


def heads_config(cfg: CfgNode, num_classes_key: str, size: int) -> CfgNode:
    """The config Detectron2's head builders read their class count from: ``cfg`` itself when its
    ``num_classes_key`` (e.g. "MODEL.ROI_HEADS.NUM_CLASSES") is ``size`` (the vocabulary's), else a
    frozen clone where the 0 of the DenseCLIP configs ("the vocabulary's size") is replaced by it. The
    vocabulary itself is never written into a config; another non-zero value is an error naming both
    numbers."""
    node = cfg
    *path, leaf = num_classes_key.split(".")
    for part in path:
        node = node[part]
    given = node[leaf]
    if given == size:
        return cfg
    if given != 0:
        raise ValueError(
            f"{num_classes_key} is {given} but the vocabulary has {size} class names: set {num_classes_key} 0 "
            f"(= the vocabulary's size) or {size}, or change the vocabulary (MODEL.DENSECLIP.CLASS_NAMES, DATASETS.TRAIN)"
        )
    out = cfg.clone()
    out.defrost()
    out.merge_from_list([num_classes_key, size])
    out.freeze()
    return out


def check_vocabulary_fits_datasets(cfg: CfgNode, kind: str = "thing") -> None:
    """For training and evaluation: the annotations' class ids index the dataset's own classes, so a
    vocabulary of another size (e.g. a run's config.yaml reused on other data, with its old
    MODEL.DENSECLIP.CLASS_NAMES) cannot label them. Renamed prompts of the same count are fine."""
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    if not names:
        return
    for key, datasets in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for dataset in datasets:
            if dataset not in DatasetCatalog.list():
                continue
            if key == "DATASETS.TEST" and MetadataCatalog.get(dataset).get("novel_classes", None):
                continue  # open-vocabulary evaluation sets are evaluated with their own names
            dataset_names = dataset_class_names(dataset, kind)
            if dataset_names and len(dataset_names) != len(names):
                raise ValueError(
                    f"MODEL.DENSECLIP.CLASS_NAMES has {len(names)} names but {key} '{dataset}' has {len(dataset_names)} "
                    f"classes ({', '.join(dataset_names[:5])}{', ...' if len(dataset_names) > 5 else ''}): set "
                    "MODEL.DENSECLIP.CLASS_NAMES [] to take the dataset's names (renamed prompts must keep the count)"
                )


def check_run_vocabulary(cfg: CfgNode) -> None:
    """For training and evaluation runs, before anything is built: the vocabulary of a DenseCLIP
    meta-architecture can be determined (:func:`vocabulary_from_config`) and fits the datasets
    (:func:`check_vocabulary_fits_datasets`). Nothing is written into ``cfg``: checkpoints record
    the vocabulary (``"vocabulary"``)."""
    kind = VOCABULARY_META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE)
    if kind is None:
        return
    vocabulary_from_config(cfg, kind)
    check_vocabulary_fits_datasets(cfg, kind)
