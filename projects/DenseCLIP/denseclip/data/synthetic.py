"""Writing the synthetic shapes datasets to disk: a small, deterministic COCO-format instance
segmentation dataset and, over the same images, a semantic segmentation dataset.

It is the project's default dataset: it needs no download, generates in a few seconds on one CPU
core, and is learnable by a tiny detector in a few hundred CPU iterations, so the quickstart, the
smoke tests and the CI can train and evaluate end to end. The vocabulary is SYNTHETIC_CLASSES by
default (8 classes, each a distinct shape *and* colour with a plain English name, "red circle"), or
any list of names of the 8 x 8 colour-shape grid (synthetic_classes.py). The scenes are drawn by
synthetic_scenes.py; registration with Detectron2 is in synthetic_registration.py.

The semantic label maps hold, per pixel, the class of the visible object (the COCO category id) or 0
for the background, written from the same visibility map as the instance annotations (no extra
random draws, so the images and instance annotations of a seed do not depend on whether label maps
exist).

Layout written under ``root``::

    train/000000.jpg ...          val/000000.jpg ...
    annotations/instances_train.json   annotations/instances_val.json
    sem_seg/train/000000.png ...  sem_seg/val/000000.png ...
    manifest.json                 (generation parameters; a matching manifest means "up to date")
"""
import contextlib
import json
import logging
import os
import shutil
import uuid
from typing import Dict, Iterator, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .synthetic_classes import SYNTHETIC_CLASSES, grid_cells
from .synthetic_scenes import SceneObject, draw_scene, label_map

logger = logging.getLogger(__name__)

# Bump when the drawing code changes, so that existing datasets on disk are regenerated
# (2: semantic label maps added; images and instance annotations are unchanged).
GENERATOR_VERSION = 2

SEM_SEG_IGNORE_LABEL = 255
SPLITS = ("train", "val")
JPEG_QUALITY = 92
MANIFEST_NAME = "manifest.json"


def _annotation(visible: np.ndarray, obj: SceneObject, ann_id: int, image_id: int) -> Dict:
    """COCO annotation of an object's visible part: polygons from its contours, tight box, area
    of the polygons as COCO computes it. ``unoccluded_area`` (pixels of the whole shape) is an
    extra key, ignored by COCO tools, that documents how much of the object is hidden."""
    contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    h, w = visible.shape
    area = float(mask_util.area(mask_util.merge(mask_util.frPyObjects(polygons, h, w))))
    ys, xs = np.nonzero(visible)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.class_index + 1,
        "segmentation": polygons,
        "area": area,
        "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        "iscrowd": 0,
        "unoccluded_area": obj.full_area,
    }


def image_file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def label_file_name(index: int) -> str:
    return f"{index:06d}.png"


def _write_encoded(path: str, image: np.ndarray, ext: str, params: Sequence[int] = ()) -> None:
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _generate_split(
    out_dir: str, split: str, num_images: int, image_size: int, seed: int, classes: Sequence[str]
) -> Dict:
    """Write ``out_dir/<split>/*.jpg`` and ``out_dir/sem_seg/<split>/*.png``; return the split's COCO dict."""
    os.makedirs(os.path.join(out_dir, split))
    os.makedirs(os.path.join(out_dir, "sem_seg", split))
    cells = grid_cells(classes)
    images, annotations = [], []
    for index in range(num_images):
        # One independent stream per image: the dataset does not depend on the generation order,
        # and each split is reproducible on its own.
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        image, objects, owner = draw_scene(rng, image_size, cells)
        file_name = image_file_name(index)
        _write_encoded(
            os.path.join(out_dir, split, file_name), image[:, :, ::-1], ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        _write_encoded(os.path.join(out_dir, "sem_seg", split, label_file_name(index)), label_map(objects, owner), ".png")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for k, obj in enumerate(objects, start=1):
            annotations.append(_annotation(owner == k, obj, len(annotations) + 1, image_id))
    return {
        "info": {"description": "DenseCLIP synthetic shapes", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(classes)],
    }


def dataset_paths(root: str) -> Dict[str, str]:
    return {
        "root": root,
        "manifest": os.path.join(root, MANIFEST_NAME),
        **{f"{s}_json": os.path.join(root, "annotations", f"instances_{s}.json") for s in SPLITS},
        **{f"{s}_image_root": os.path.join(root, s) for s in SPLITS},
        **{f"{s}_sem_seg_root": os.path.join(root, "sem_seg", s) for s in SPLITS},
    }


def _manifest(num_train: int, num_val: int, image_size: int, seed: int, classes: Sequence[str]) -> Dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "classes": list(classes),
    }


def _is_up_to_date(root: str, manifest: Dict) -> bool:
    """Whether ``root`` holds a complete dataset generated with exactly these parameters."""
    paths = dataset_paths(root)
    try:
        with open(paths["manifest"]) as f:
            if json.load(f) != manifest:
                return False
    except (OSError, ValueError):
        return False
    counts = {"train": manifest["num_train"], "val": manifest["num_val"]}
    return all(
        os.path.isfile(paths[f"{s}_json"])
        and all(
            os.path.isfile(os.path.join(paths[f"{s}_image_root"], image_file_name(i)))
            and os.path.isfile(os.path.join(paths[f"{s}_sem_seg_root"], label_file_name(i)))
            for i in range(counts[s])
        )
        for s in SPLITS
    )


@contextlib.contextmanager
def _exclusive_lock(root: str) -> Iterator[None]:
    """Serialise generation between processes (e.g. one per GPU) that share ``root``, by locking
    its parent folder (a lock on a folder leaves no lock file behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent first use is then the caller's responsibility
        yield
        return
    fd = os.open(os.path.dirname(root), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_replaceable(root: str) -> None:
    """Refuse to delete a folder this generator did not write (e.g. a mistyped --root)."""
    if not os.path.exists(root):
        return
    entries = set(os.listdir(root))
    ours = {MANIFEST_NAME, "annotations", "sem_seg", *SPLITS}
    if entries and (MANIFEST_NAME not in entries or not entries <= ours):
        raise FileExistsError(
            f"{root} exists and does not look like a synthetic shapes dataset (it contains "
            f"{sorted(entries - ours) or 'no manifest.json'}); refusing to overwrite it. "
            "Choose another root or remove the folder."
        )


def _new_sibling_dir(root: str, tag: str) -> str:
    """A new hidden folder next to ``root`` (same file system, so renames are atomic), created
    with the usual permissions (tempfile.mkdtemp would make the dataset private to its owner)."""
    path = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.{tag}-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    return path


def generate_synthetic_dataset(
    root: str,
    num_train: int = 240,
    num_val: int = 60,
    image_size: int = 256,
    seed: int = 0,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
) -> Dict[str, str]:
    """Generate the synthetic shapes dataset under ``root`` unless it is already there.

    ``classes``: the vocabulary, names of the colour-shape grid (category ids 1..len(classes) in
    this order); the default 8 classes are the quickstart's.

    Idempotent: when ``root/manifest.json`` matches the parameters and every file exists, nothing
    is written. Otherwise the dataset is written into a temporary sibling folder and renamed into
    place, so an interrupted run never leaves a half-written dataset that looks complete.

    Returns the paths: ``root``, ``manifest``, ``train_json``, ``val_json``, ``train_image_root``,
    ``val_image_root``, ``train_sem_seg_root``, ``val_sem_seg_root``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    grid_cells(classes)  # a clear error for names outside the grid, before anything is written
    root = os.path.abspath(os.fspath(root))
    paths = dataset_paths(root)
    manifest = _manifest(num_train, num_val, image_size, seed, classes)
    if _is_up_to_date(root, manifest):
        return paths
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with _exclusive_lock(root):
        if _is_up_to_date(root, manifest):  # another process generated it while we waited
            return paths
        _check_replaceable(root)
        logger.info(f"Generating the synthetic shapes dataset ({num_train} train + {num_val} val) in {root}")
        tmp = _new_sibling_dir(root, "tmp")
        try:
            os.makedirs(os.path.join(tmp, "annotations"))
            for split, n in zip(SPLITS, (num_train, num_val)):
                coco = _generate_split(tmp, split, n, image_size, seed, classes)
                with open(os.path.join(tmp, "annotations", f"instances_{split}.json"), "w") as f:
                    json.dump(coco, f)
            # The manifest is written last: its presence marks a complete dataset.
            with open(os.path.join(tmp, MANIFEST_NAME), "w") as f:
                json.dump(manifest, f, indent=1)
            old: Optional[str] = None
            if os.path.exists(root):
                old = _new_sibling_dir(root, "old")
                os.rename(root, os.path.join(old, "dataset"))
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return paths


