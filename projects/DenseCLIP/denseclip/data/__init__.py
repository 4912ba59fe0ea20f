"""Datasets and data loading of DenseCLIP.

Importing this package registers "synthetic_shapes_train" and "synthetic_shapes_val" and their
semantic segmentation twins "synthetic_shapes_sem_seg_train" and "synthetic_shapes_sem_seg_val"
(generated on first use under $DENSECLIP_SYNTHETIC_ROOT, else ``datasets/synthetic_shapes`` in the
working directory), so that the default configs run with no download, and, like Detectron2's
builtin datasets, "ade20k_mmseg_sem_seg_train" and "ade20k_mmseg_sem_seg_val" and the
open-vocabulary benchmarks "coco_2017_ov_train_base", "coco_2017_ov_val_generalized",
"lvis_v1_ov_train_norare" and "lvis_v1_ov_val" (:mod:`.open_vocabulary`) under $DETECTRON2_DATASETS
(read when a loader asks for them).
"""
from .ade20k import ADE20K_DATASET_NAMES, register_ade20k
from .ade20k_classes import ADE20K_CLASSES
from .from_config import register_datasets_from_config
from .mapper import BadImageError, RobustDatasetMapper, read_image_robust, read_label_map
from .open_vocabulary import (
    OV_COCO_BASE_CLASSES,
    OV_COCO_NOVEL_CLASSES,
    is_open_vocabulary_dataset,
    register_builtin_open_vocabulary,
    register_ov_coco,
    register_ov_lvis,
)
from .register import (
    parse_dataset_spec,
    register_coco_json,
    register_datasets_from_spec,
    register_tiny_coco,
    validate_coco_json,
)
from .sem_seg_folder import read_class_names, register_sem_seg_folder, validate_sem_seg_folder
from .sem_seg_mapper import SemSegDatasetMapper, build_sem_seg_augmentations
from .synthetic import generate_synthetic_dataset
from .synthetic_captions import caption, caption_pairs, object_crops
from .synthetic_classes import (
    COLOURS,
    SHAPES,
    SYNTHETIC_CLASSES,
    SYNTHETIC_GRID_CLASSES,
    SYNTHETIC_SEM_SEG_CLASSES,
    grid_cell,
)
from .synthetic_open_vocabulary import (
    SYNTHETIC_OV_BASE_CLASSES,
    SYNTHETIC_OV_NOVEL_CLASSES,
    held_out_split,
    register_synthetic_open_vocabulary,
)
from .synthetic_registration import default_synthetic_root, register_synthetic_dataset, register_synthetic_from_config

register_synthetic_dataset()
register_ade20k()
register_builtin_open_vocabulary()
register_synthetic_open_vocabulary()

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_DATASET_NAMES",
    "OV_COCO_BASE_CLASSES",
    "OV_COCO_NOVEL_CLASSES",
    "BadImageError",
    "COLOURS",
    "RobustDatasetMapper",
    "SHAPES",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_GRID_CLASSES",
    "SYNTHETIC_OV_BASE_CLASSES",
    "SYNTHETIC_OV_NOVEL_CLASSES",
    "SYNTHETIC_SEM_SEG_CLASSES",
    "SemSegDatasetMapper",
    "build_sem_seg_augmentations",
    "caption",
    "caption_pairs",
    "default_synthetic_root",
    "generate_synthetic_dataset",
    "grid_cell",
    "held_out_split",
    "is_open_vocabulary_dataset",
    "object_crops",
    "parse_dataset_spec",
    "read_class_names",
    "read_image_robust",
    "read_label_map",
    "register_ade20k",
    "register_coco_json",
    "register_datasets_from_config",
    "register_builtin_open_vocabulary",
    "register_datasets_from_spec",
    "register_ov_coco",
    "register_ov_lvis",
    "register_sem_seg_folder",
    "register_synthetic_dataset",
    "register_synthetic_from_config",
    "register_synthetic_open_vocabulary",
    "register_tiny_coco",
    "validate_coco_json",
    "validate_sem_seg_folder",
]
