"""Datasets and data loading of DenseCLIP.

Importing this package registers "synthetic_shapes_train" and "synthetic_shapes_val" (generated on
first use under $DENSECLIP_SYNTHETIC_ROOT, else ``datasets/synthetic_shapes`` in the working
directory), so that the default configs run with no download.
"""
from .from_config import register_datasets_from_config
from .mapper import BadImageError, RobustDatasetMapper, read_image_robust
from .register import (
    parse_dataset_spec,
    register_coco_json,
    register_datasets_from_spec,
    register_tiny_coco,
    validate_coco_json,
)
from .synthetic import (
    SYNTHETIC_CLASSES,
    default_synthetic_root,
    generate_synthetic_dataset,
    register_synthetic_dataset,
    register_synthetic_from_config,
)

register_synthetic_dataset()

__all__ = [
    "BadImageError",
    "RobustDatasetMapper",
    "SYNTHETIC_CLASSES",
    "default_synthetic_root",
    "generate_synthetic_dataset",
    "parse_dataset_spec",
    "read_image_robust",
    "register_coco_json",
    "register_datasets_from_config",
    "register_datasets_from_spec",
    "register_synthetic_dataset",
    "register_synthetic_from_config",
    "register_tiny_coco",
    "validate_coco_json",
]
