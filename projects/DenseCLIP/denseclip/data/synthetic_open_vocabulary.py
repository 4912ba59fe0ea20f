"""A held-out split of the synthetic colour x shape classes: open vocabulary measured on the embedded data.

The 36 classes of a 6 x 6 block of the colour-shape grid (synthetic_classes.py: red, blue, green,
yellow, purple, orange x circle, square, triangle, star, hexagon, diamond) are split into 24 base and
12 novel classes along two wrapped diagonals of the block (shape index - colour index = 1 or 4,
mod 6): every colour and every shape then keeps 4 base classes, so each novel class ("red square")
combines a colour and a shape that training showed, only never together. That is what a text tower
pretrained on captions (the small CLIP) can know and an untrained one cannot.

- "synthetic_shapes_ov_train_base": images drawn with the 24 base classes only (a novel object is
  never seen in training, not even as background), the 24 base names as vocabulary;
- "synthetic_shapes_ov_val": images drawn with all 36 classes, evaluated in the generalized setting
  (all 36 names; ``novel_classes`` metadata: OpenVocabularyCOCOEvaluator's AP50 on novel / base / all).

Both are generated on first use (generate_synthetic_dataset) under ``<synthetic root>_ov``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

from .synthetic import dataset_paths, generate_synthetic_dataset
from .synthetic_classes import class_name, grid_cells
from .synthetic_registration import default_synthetic_root

__all__ = [
    "SYNTHETIC_OV_BASE_CLASSES",
    "SYNTHETIC_OV_CLASSES",
    "SYNTHETIC_OV_DATASET_NAMES",
    "SYNTHETIC_OV_NOVEL_CLASSES",
    "held_out_split",
    "register_synthetic_open_vocabulary",
]

BLOCK = 6  # colours and shapes of the block
NOVEL_DIAGONALS = (1, 4)  # (shape - colour) mod BLOCK of the novel classes

SYNTHETIC_OV_CLASSES: List[str] = [class_name(c, s) for c in range(BLOCK) for s in range(BLOCK)]
SYNTHETIC_OV_DATASET_NAMES = {"train": "synthetic_shapes_ov_train_base", "val": "synthetic_shapes_ov_val"}


def held_out_split(classes: Sequence[str], novel_diagonals: Sequence[int] = NOVEL_DIAGONALS,
                   block: int = BLOCK) -> Tuple[List[str], List[str]]:
    """(base, novel) of grid ``classes``: novel are the cells with (shape - colour) mod ``block`` in
    ``novel_diagonals``. Raises when a novel class's colour or shape appears in no base class."""
    base, novel = [], []
    for name, (colour, shape) in zip(classes, grid_cells(classes)):
        (novel if (shape - colour) % block in novel_diagonals else base).append(name)
    base_colours = {c for c, _ in grid_cells(base)} if base else set()
    base_shapes = {s for _, s in grid_cells(base)} if base else set()
    unseen = [n for n, (c, s) in zip(novel, grid_cells(novel) if novel else []) if c not in base_colours or s not in base_shapes]
    if unseen:
        raise ValueError(f"novel classes {unseen} combine a colour or shape that no base class has")
    return base, novel


SYNTHETIC_OV_BASE_CLASSES, SYNTHETIC_OV_NOVEL_CLASSES = held_out_split(SYNTHETIC_OV_CLASSES)


def synthetic_ov_roots(root: str = "") -> Dict[str, str]:
    """Where the base-class training images and the all-class validation images are generated."""
    root = os.path.abspath(root) if root else default_synthetic_root() + "_ov"
    return {"train": os.path.join(root, "base"), "val": os.path.join(root, "all")}


def register_synthetic_open_vocabulary(root: str = "", num_train: int = 240, num_val: int = 120, image_size: int = 256,
                                       seed: int = 0) -> List[str]:
    """Register the two datasets (lazily: generated when a loader first asks). Returns their names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    roots = synthetic_ov_roots(root)
    specs = {
        # The validation images come from another seed than the training ones.
        "train": (SYNTHETIC_OV_BASE_CLASSES, dict(num_train=num_train, num_val=1, seed=seed)),
        "val": (SYNTHETIC_OV_CLASSES, dict(num_train=1, num_val=num_val, seed=seed + 1)),
    }
    for split, (classes, counts) in specs.items():
        name = SYNTHETIC_OV_DATASET_NAMES[split]
        paths = dataset_paths(roots[split])

        def load(split: str = split, classes: Sequence[str] = classes, counts: Dict = counts,
                 paths: Dict[str, str] = paths) -> List[Dict]:
            generate_synthetic_dataset(roots[split], image_size=image_size, classes=classes, **counts)
            return load_coco_json(paths[f"{split}_json"], paths[f"{split}_image_root"], SYNTHETIC_OV_DATASET_NAMES[split])

        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        metadata = dict(thing_classes=list(classes), thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(classes))},
                        evaluator_type="coco_open_vocabulary", image_root=paths[f"{split}_image_root"],
                        base_classes=list(SYNTHETIC_OV_BASE_CLASSES))
        if split == "val":
            metadata["novel_classes"] = list(SYNTHETIC_OV_NOVEL_CLASSES)
        MetadataCatalog.get(name).set(**metadata)
    return list(SYNTHETIC_OV_DATASET_NAMES.values())

