"""Registration of the synthetic shapes datasets with Detectron2 (lazily generated on first use).

"synthetic_shapes_{train,val}" (instances, COCO evaluation) and, over the same images,
"synthetic_shapes_sem_seg_{train,val}" (semantic label maps, mIoU evaluation), with the 8-class
vocabulary SYNTHETIC_CLASSES. The files are written by synthetic.py.
"""
import logging
import os
from typing import Dict, List, Optional

from .synthetic import SEM_SEG_IGNORE_LABEL, SPLITS, dataset_paths, generate_synthetic_dataset, image_file_name, label_file_name
from .synthetic_classes import SYNTHETIC_CLASSES, SYNTHETIC_SEM_SEG_CLASSES

logger = logging.getLogger(__name__)

SYNTHETIC_DATASET_NAMES = {split: f"synthetic_shapes_{split}" for split in SPLITS}
SYNTHETIC_SEM_SEG_DATASET_NAMES = {split: f"synthetic_shapes_sem_seg_{split}" for split in SPLITS}
# Used when neither an explicit root nor DENSECLIP_SYNTHETIC_ROOT is given; relative to the
# working directory, like Detectron2's own "datasets/" default.
DEFAULT_SYNTHETIC_ROOT = os.path.join("datasets", "synthetic_shapes")
SYNTHETIC_ROOT_ENV = "DENSECLIP_SYNTHETIC_ROOT"


def default_synthetic_root() -> str:
    """$DENSECLIP_SYNTHETIC_ROOT, else ``datasets/synthetic_shapes`` under the working directory."""
    return os.path.abspath(os.environ.get(SYNTHETIC_ROOT_ENV) or DEFAULT_SYNTHETIC_ROOT)


def _sem_seg_records(paths: Dict[str, str], split: str, count: int, image_size: int) -> List[Dict]:
    """Detectron2 semantic segmentation records of a generated split (one per image, by index)."""
    image_root, label_root = paths[f"{split}_image_root"], paths[f"{split}_sem_seg_root"]
    return [
        {
            "file_name": os.path.join(image_root, image_file_name(i)),
            "sem_seg_file_name": os.path.join(label_root, label_file_name(i)),
            "image_id": i + 1,
            "height": image_size,
            "width": image_size,
        }
        for i in range(count)
    ]


def register_synthetic_dataset(
    root: Optional[str] = None, num_train: int = 240, num_val: int = 60, image_size: int = 256, seed: int = 0
) -> List[str]:
    """Register the synthetic datasets with Detectron2: "synthetic_shapes_train" and
    "synthetic_shapes_val" (instances, COCO evaluation), and over the same images
    "synthetic_shapes_sem_seg_train" and "synthetic_shapes_sem_seg_val" (semantic label maps,
    stuff_classes = SYNTHETIC_SEM_SEG_CLASSES, ignore_label 255, mIoU evaluation).

    Registration is lazy: nothing is generated until ``DatasetCatalog.get`` is called, so that
    importing the package stays cheap and never writes files. The metadata (thing_classes or
    stuff_classes, evaluator_type, file locations) is available at once, because the model's
    vocabulary is read from it before any data is loaded.

    Registering again with the same parameters does nothing; with different ones (another root,
    size or seed) it replaces the previous registration. Returns the two instance dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = os.path.abspath(os.fspath(root)) if root is not None else default_synthetic_root()
    params = {"root": root, "num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    paths = dataset_paths(root)

    def generate() -> None:
        generate_synthetic_dataset(root, num_train, num_val, image_size, seed)

    for split in SPLITS:
        instances = {
            "thing_classes": list(SYNTHETIC_CLASSES),
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SYNTHETIC_CLASSES))},
            "evaluator_type": "coco",
            "json_file": paths[f"{split}_json"],
            "image_root": paths[f"{split}_image_root"],
        }
        sem_seg = {
            "stuff_classes": list(SYNTHETIC_SEM_SEG_CLASSES),
            "ignore_label": SEM_SEG_IGNORE_LABEL,
            "evaluator_type": "sem_seg",
            "image_root": paths[f"{split}_image_root"],
            "sem_seg_root": paths[f"{split}_sem_seg_root"],
        }

        def load_instances(split: str = split) -> List[Dict]:
            generate()
            return load_coco_json(paths[f"{split}_json"], paths[f"{split}_image_root"], SYNTHETIC_DATASET_NAMES[split])

        def load_sem_seg(split: str = split) -> List[Dict]:
            generate()
            return _sem_seg_records(paths, split, num_train if split == "train" else num_val, image_size)

        for name, load, metadata in (
            (SYNTHETIC_DATASET_NAMES[split], load_instances, instances),
            (SYNTHETIC_SEM_SEG_DATASET_NAMES[split], load_sem_seg, sem_seg),
        ):
            if name in DatasetCatalog.list():
                if getattr(MetadataCatalog.get(name), "synthetic_params", None) == params:
                    continue
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, load)
            MetadataCatalog.get(name).set(**metadata, synthetic_params=params)
    return list(SYNTHETIC_DATASET_NAMES.values())


def register_synthetic_from_config(cfg) -> List[str]:
    """(Re-)register the synthetic datasets (instances and semantic segmentation) with the
    parameters in ``cfg.DATASETS.SYNTHETIC``; returns the four names.

    A relative ROOT is resolved against the working directory. When ROOT is left at its stock
    value and $DENSECLIP_SYNTHETIC_ROOT is set, the environment variable wins, so that one
    variable moves the dataset for the import-time registration and for every config alike.
    """
    from detectron2.data import MetadataCatalog

    c = cfg.DATASETS.SYNTHETIC
    root = None if os.path.normpath(c.ROOT) == DEFAULT_SYNTHETIC_ROOT else c.ROOT
    names = register_synthetic_dataset(root, c.NUM_TRAIN, c.NUM_VAL, c.IMAGE_SIZE, c.SEED)
    names += list(SYNTHETIC_SEM_SEG_DATASET_NAMES.values())
    for name in names:
        if name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
            params = MetadataCatalog.get(name).synthetic_params
            logger.info(f"Registered dataset {name!r}: synthetic shapes in {params['root']} (generated on first use)")
    return names
