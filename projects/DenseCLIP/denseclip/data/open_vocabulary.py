"""Open-vocabulary benchmarks: training sets without the novel classes' annotations, evaluation sets
with every class, as the literature defines them.

- OV-COCO (Zareian et al., OVR-CNN, CVPR 2021): 48 base and 17 novel of COCO's 80 classes (the other
  15 have no WordNet synset and are left out). Training: COCO train2017 with the annotations of the
  base classes only; the images stay, novel objects in them become background (images left without
  any annotation are dropped by Detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS, which gives OVR-CNN's
  training images). Evaluation, the generalized setting: val2017 images with at least one of the 65
  classes, annotations of the 65, and all 65 names in the model's vocabulary.
- OV-LVIS (Gu et al., ViLD, ICLR 2022): LVIS v1's 337 rare classes are novel, the 866 common and
  frequent ones base. Training: lvis_v1_train without the rare classes' annotations (images stay);
  evaluation: lvis_v1_val with all 1203 names, reported as APr (novel), APc, APf and AP.

Training sets carry the base names only (``thing_classes``: the vocabulary a model is trained with,
so novel names are never seen, not even as negatives); evaluation sets carry every name plus the
``base_classes`` and ``novel_classes`` metadata, which makes evaluation run with the dataset's full
vocabulary (:func:`denseclip.evaluation.open_vocabulary.dataset_vocabulary`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

logger = logging.getLogger(__name__)

__all__ = [
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "is_open_vocabulary_dataset",
    "register_ov_coco",
    "register_ov_lvis",
]

# OVR-CNN's split, in COCO's category order, with Detectron2's COCO names.
OV_COCO_BASE_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep", "bear",
    "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard", "bottle", "fork",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
    "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock",
    "vase", "toothbrush",
)
OV_COCO_NOVEL_CLASSES = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup", "knife",
    "cake", "couch", "keyboard", "sink", "scissors",
)
OV_SPLITS = ("train_base", "val_generalized")
_DATASETS_ROOT = os.environ.get("DETECTRON2_DATASETS", "datasets")
# Builtin names (Detectron2's layout under $DETECTRON2_DATASETS), read when a loader asks for them.
OV_COCO_BUILTIN = {
    "coco_2017_ov_train_base": ("train_base", "coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_ov_val_generalized": ("val_generalized", "coco/annotations/instances_val2017.json", "coco/val2017"),
}
OV_LVIS_BUILTIN = {
    "lvis_v1_ov_train_norare": ("train_base", "coco/lvis/lvis_v1_train.json", "coco/"),
    "lvis_v1_ov_val": ("val_generalized", "coco/lvis/lvis_v1_val.json", "coco/"),
}


def is_open_vocabulary_dataset(dataset_name: str) -> bool:
    """Whether ``dataset_name`` is an open-vocabulary evaluation set (evaluated with all its names)."""
    return bool(MetadataCatalog.get(dataset_name).get("novel_classes", None))


def _check_split(split: str) -> None:
    if split not in OV_SPLITS:
        raise ValueError(f"open-vocabulary split must be one of {OV_SPLITS}, got {split!r}")


def _coco_categories(json_file: str) -> Dict[int, str]:
    with open(json_file) as f:
        return {c["id"]: c["name"] for c in json.load(f)["categories"]}


def load_ov_coco(json_file: str, image_root: str, split: str) -> List[Dict]:
    """Detectron2 dataset dicts of OV-COCO's ``split`` from a COCO instances json (the 80 classes):
    "train_base", annotations of the 48 base classes, every image kept; "val_generalized", annotations
    of the 65 classes, images with at least one of them. Category ids index the split's classes."""
    _check_split(split)
    classes = OV_COCO_BASE_CLASSES if split == "train_base" else OV_COCO_BASE_CLASSES + OV_COCO_NOVEL_CLASSES
    classes = _coco_order(classes)
    index = {name: i for i, name in enumerate(classes)}
    names = _coco_categories(json_file)
    missing = sorted(set(classes) - set(names.values()))
    if missing:
        raise ValueError(f"{json_file}: OV-COCO needs the COCO categories {missing}; its categories lack them")
    records = load_coco_json(json_file, image_root)  # no dataset name: category ids stay COCO's
    kept, removed = [], 0
    for record in records:
        annotations = [dict(a, category_id=index[names[a["category_id"]]]) for a in record["annotations"]
                       if names[a["category_id"]] in index]
        removed += len(record["annotations"]) - len(annotations)
        if split == "val_generalized" and not annotations:
            continue
        kept.append(dict(record, annotations=annotations))
    logger.info("OV-COCO %s from %s: %d images, %d annotations of other classes removed", split, json_file, len(kept), removed)
    return kept


def _coco_order(classes: Sequence[str]) -> List[str]:
    """``classes`` in COCO's category order (base and novel interleaved as COCO lists them)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    order = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    return sorted(classes, key=order.index)


def register_ov_coco(name: str, json_file: str, image_root: str, split: str) -> None:
    """Register OV-COCO's ``split`` ("train_base" or "val_generalized") of a COCO instances json as
    ``name``: base names only for training, all 65 with ``base_classes``/``novel_classes`` for evaluation
    (evaluated by :class:`denseclip.evaluation.OpenVocabularyCOCOEvaluator`)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    _check_split(split)
    classes = _coco_order(OV_COCO_BASE_CLASSES if split == "train_base" else OV_COCO_BASE_CLASSES + OV_COCO_NOVEL_CLASSES)
    coco_ids = {c["name"]: c["id"] for c in COCO_CATEGORIES if c["isthing"]}
    DatasetCatalog.register(name, lambda: load_ov_coco(json_file, image_root, split))
    metadata = dict(
        thing_classes=classes, image_root=image_root, evaluator_type="coco_open_vocabulary",
        thing_dataset_id_to_contiguous_id={coco_ids[n]: i for i, n in enumerate(classes)},
        base_classes=list(_coco_order(OV_COCO_BASE_CLASSES)),
    )
    if split == "val_generalized":
        metadata["novel_classes"] = list(_coco_order(OV_COCO_NOVEL_CLASSES))
    # No json_file: COCOEvaluator converts these dicts (65 categories, COCO ids) to its ground truth.
    MetadataCatalog.get(name).set(**metadata)


def _lvis_categories(json_file: str) -> List[Dict]:
    with open(json_file) as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    if [c["id"] for c in categories] != list(range(1, len(categories) + 1)):
        raise ValueError(f"{json_file}: LVIS category ids must be 1..{len(categories)} (LVIS v1's), in order")
    bad = [c["id"] for c in categories if c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise ValueError(f"{json_file}: categories {bad[:10]} lack an LVIS 'frequency' ('r', 'c' or 'f')")
    return categories


def load_ov_lvis_train(json_file: str, image_root: str) -> List[Dict]:
    """Detectron2 dataset dicts of an LVIS json without the annotations of its rare classes
    (``frequency`` "r"); every image kept, with its ``not_exhaustive_category_ids`` and
    ``neg_category_ids``. Category ids index the base (common and frequent) classes."""
    categories = _lvis_categories(json_file)
    base_index = {}
    for c in categories:
        if c["frequency"] != "r":
            base_index[c["id"] - 1] = len(base_index)
    records = load_lvis_json(json_file, image_root)  # no dataset name: category ids are LVIS id - 1
    removed = 0
    for record in records:
        annotations = [dict(a, category_id=base_index[a["category_id"]]) for a in record["annotations"]
                       if a["category_id"] in base_index]
        removed += len(record["annotations"]) - len(annotations)
        record["annotations"] = annotations
    logger.info("OV-LVIS training set from %s: %d images, %d annotations of rare classes removed", json_file, len(records), removed)
    return records


def register_ov_lvis(name: str, json_file: str, image_root: str, split: str,
                     categories: Optional[Sequence[Dict]] = None) -> None:
    """Register an LVIS v1-format json as OV-LVIS's ``split``: "train_base" (rare classes' annotations
    removed, base names only) or "val_generalized" (every class, rare ones as ``novel_classes``;
    evaluated by Detectron2's LVISEvaluator: APr, APc, APf, AP). ``categories`` (ids 1..K with
    ``name`` and ``frequency``; default: read from the json) fix the class names and the split."""
    _check_split(split)
    categories = list(categories) if categories is not None else _lvis_categories(json_file)
    names = [c["name"].replace("_", " ") for c in categories]
    base = [n for n, c in zip(names, categories) if c["frequency"] != "r"]
    metadata = dict(json_file=json_file, image_root=image_root, evaluator_type="lvis", base_classes=base)
    if split == "train_base":
        DatasetCatalog.register(name, lambda: load_ov_lvis_train(json_file, image_root))
        base_ids = [c["id"] for c in categories if c["frequency"] != "r"]
        metadata.update(thing_classes=base, thing_dataset_id_to_contiguous_id={i: k for k, i in enumerate(base_ids)})
    else:
        DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root))
        metadata.update(thing_classes=names, novel_classes=[n for n, c in zip(names, categories) if c["frequency"] == "r"])
    MetadataCatalog.get(name).set(**metadata)


def register_builtin_open_vocabulary(root: str = _DATASETS_ROOT) -> None:
    """OV-COCO and OV-LVIS under Detectron2's dataset layout (``$DETECTRON2_DATASETS``), registered
    lazily as Detectron2's builtin datasets are: nothing is read until a loader asks."""
    for name, (split, json_file, image_root) in OV_COCO_BUILTIN.items():
        if name not in DatasetCatalog.list():
            register_ov_coco(name, os.path.join(root, json_file), os.path.join(root, image_root), split)
    for name, (split, json_file, image_root) in OV_LVIS_BUILTIN.items():
        if name not in DatasetCatalog.list():
            register_ov_lvis(name, os.path.join(root, json_file), os.path.join(root, image_root), split, LVIS_CATEGORIES)
