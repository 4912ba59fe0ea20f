"""ADE20K (SceneParsing, 150 classes) with the class names the authors trained with.

The files are Detectron2's layout, ``$DETECTRON2_DATASETS/ADEChallengeData2016`` with
``images/{training,validation}`` and ``annotations_detectron2/{training,validation}`` (labels
shifted by -1, "other" -> 255, written by ``datasets/prepare_ade20k_sem_seg.py``; mmseg's
``reduce_zero_label`` does the same on the fly). Detectron2 v0.6 registers these files as
``ade20k_sem_seg_{train,val}`` with its own class names, which do not fit the 5-token name context
of the released models (28 are longer) and differ from the authors' in 51 places. The same files
are registered here as ``ade20k_mmseg_sem_seg_{train,val}`` with mmseg 0.19's names
(``ADE20K_CLASSES``); Detectron2's registration is left as it is, so that its names keep meaning
what Detectron2's own models and configs expect.
"""
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from .ade20k_classes import ADE20K_CLASSES

__all__ = ["ADE20K_DATASET_NAMES", "register_ade20k"]

ADE20K_DIR = "ADEChallengeData2016"
ADE20K_DATASET_NAMES = {"train": "ade20k_mmseg_sem_seg_train", "val": "ade20k_mmseg_sem_seg_val"}
_SPLIT_DIRS = {"train": "training", "val": "validation"}
PREPARE_HINT = (
    "Download ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip), "
    "unzip it under $DETECTRON2_DATASETS (default: datasets/) and run "
    "`python datasets/prepare_ade20k_sem_seg.py` (see datasets/README.md)"
)


def _load(image_root: str, label_root: str) -> List[Dict]:
    for what, folder in (("image", image_root), ("label", label_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"ADE20K {what} folder not found: {folder}. {PREPARE_HINT}")
    return load_sem_seg(label_root, image_root, gt_ext="png", image_ext="jpg")


def register_ade20k(root: Optional[str] = None) -> List[str]:
    """Register ``ade20k_mmseg_sem_seg_train`` and ``ade20k_mmseg_sem_seg_val`` (lazily: the
    folders are read when a loader asks) under ``root`` (default: $DETECTRON2_DATASETS, else
    ``datasets``), with stuff_classes = mmseg's 150 names, ignore_label 255 and evaluator_type
    "sem_seg". Registering again replaces the previous registration. Returns the two names."""
    base = os.path.join(root or os.getenv("DETECTRON2_DATASETS", "datasets"), ADE20K_DIR)
    for split, name in ADE20K_DATASET_NAMES.items():
        image_root = os.path.join(base, "images", _SPLIT_DIRS[split])
        label_root = os.path.join(base, "annotations_detectron2", _SPLIT_DIRS[split])
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda x=image_root, y=label_root: _load(x, y))
        MetadataCatalog.get(name).set(
            stuff_classes=list(ADE20K_CLASSES),
            ignore_label=255,
            evaluator_type="sem_seg",
            image_root=image_root,
            sem_seg_root=label_root,
        )
    return list(ADE20K_DATASET_NAMES.values())
