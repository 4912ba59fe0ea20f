"""A small, deterministic COCO-format instance-segmentation dataset of synthetic shape scenes.

It is the project's default dataset: it needs no download, generates in a few seconds on one CPU
core, and is learnable by a tiny detector in a few hundred CPU iterations, so the quickstart, the
smoke tests and the CI can train and evaluate end to end. Every class is a distinct shape *and* a
distinct colour with a plain English name ("red circle"), so CLIP's text encoder gets meaningful
class names. Scenes are drawn on textured, noisy backgrounds with partial occlusions; the masks of
occluded objects cover only their visible part, exactly as in real COCO annotations.

The same scenes also make a semantic segmentation dataset: one label PNG per image whose pixel
values are the class of the visible object (1-8, the COCO category id) or 0 for the background,
written from the same visibility map as the instance annotations (no extra random draws, so the
images and instance annotations of a seed do not depend on whether label maps exist).

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
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

logger = logging.getLogger(__name__)

# Bump when the drawing code changes, so that existing datasets on disk are regenerated
# (2: semantic label maps added; images and instance annotations are unchanged).
GENERATOR_VERSION = 2

SYNTHETIC_CLASSES: List[str] = [
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple hexagon",
    "orange diamond",
    "white cross",
    "pink heart",
]
# Classes of the semantic label maps: the background, then the shapes, so that label value = the
# shape's COCO category id.
SYNTHETIC_SEM_SEG_CLASSES: List[str] = ["background", *SYNTHETIC_CLASSES]
SEM_SEG_IGNORE_LABEL = 255

# RGB base colour of each class (index-aligned with SYNTHETIC_CLASSES).
_CLASS_COLOURS = np.array(
    [
        (220, 35, 35),
        (35, 75, 220),
        (35, 170, 55),
        (240, 215, 35),
        (140, 50, 190),
        (250, 140, 25),
        (245, 245, 245),
        (250, 115, 185),
    ],
    dtype=np.float32,
)

SPLITS = ("train", "val")
# Objects per image, and object extent as a fraction of the image side.
MIN_OBJECTS, MAX_OBJECTS = 1, 6
MIN_EXTENT, MAX_EXTENT = 0.15, 0.45
# An object less visible than this (fraction of its own shape) would be an unfair target: the
# placement that would occlude it that much is rejected, so no unlabelled fragment ever remains.
MIN_VISIBLE_FRACTION = 0.3
# Visible fragments smaller than this (pixels, contour area) cannot make a useful polygon.
MIN_FRAGMENT_AREA = 12.0
JPEG_QUALITY = 92
MANIFEST_NAME = "manifest.json"


def _unit_polygon(shape_index: int) -> np.ndarray:
    """Outline of class ``shape_index`` as (N, 2) points inside the unit disc, centred on 0."""
    if shape_index == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape_index == 1:  # square
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape_index == 2:  # equilateral triangle
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape_index == 3:  # five-pointed star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape_index == 4:  # hexagon
        t = np.arange(6) * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape_index == 5:  # diamond (elongated rhombus, so it never looks like a square)
        return np.array([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)])
    if shape_index == 6:  # plus-shaped cross
        a = 0.33
        return np.array(
            [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
             (-1, -a), (-a, -a)],
            dtype=np.float64,
        )
    if shape_index == 7:  # heart (classic parametric curve, y pointing down in image coordinates)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / np.abs(pts).max()
    raise ValueError(f"no shape with index {shape_index}")


_UNIT_POLYGONS = [_unit_polygon(i) for i in range(len(SYNTHETIC_CLASSES))]


@dataclass
class _Object:
    class_index: int
    full_mask: np.ndarray  # bool (H, W): the whole shape, as if nothing occluded it
    colour: np.ndarray  # float32 (3,) RGB

    @property
    def full_area(self) -> int:
        return int(self.full_mask.sum())


def _sample_object(rng: np.random.Generator, size: int) -> _Object:
    """A random shape of a random class, rotated, scaled to 15-45% of the side, inside the image."""
    class_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = _UNIT_POLYGONS[class_index] @ rot.T
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    extent = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size
    pts *= extent / max(np.ptp(pts, axis=0).max(), 1e-6)
    lo, hi = -pts.min(0), size - 1 - pts.max(0)
    pts += rng.uniform(lo, hi)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    colour = np.clip(_CLASS_COLOURS[class_index] + rng.integers(-25, 26, 3), 0, 255)
    return _Object(class_index, mask.astype(bool), colour.astype(np.float32))


def _is_clean(visible: np.ndarray) -> bool:
    """Whether a visible mask is exactly representable by COCO polygons: no holes (a polygon
    cannot have one), and no fragment too small to make a polygon."""
    contours, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0, :, 3] != -1).any():
        return False
    return all(len(c) >= 3 and cv2.contourArea(c) >= MIN_FRAGMENT_AREA for c in contours)


def _place_objects(rng: np.random.Generator, size: int) -> Tuple[List[_Object], np.ndarray]:
    """Stack random objects back to front; returns them and the map of which one (1-based) is
    visible at each pixel (0 = background).

    A candidate drawn over earlier objects is rejected when it would leave one of them less than
    MIN_VISIBLE_FRACTION visible or not representable by polygons, so every drawn pixel of an
    object belongs to its annotation.
    """
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    objects: List[_Object] = []
    owner = np.zeros((size, size), np.int16)
    for _ in range(10 * target):
        if len(objects) == target:
            break
        cand = _sample_object(rng, size)
        new_owner = owner.copy()
        new_owner[cand.full_mask] = len(objects) + 1
        occluded = np.unique(owner[cand.full_mask])
        ok = True
        for k in occluded[occluded > 0]:
            visible = new_owner == k
            if visible.sum() < MIN_VISIBLE_FRACTION * objects[k - 1].full_area or not _is_clean(visible):
                ok = False
                break
        if ok:
            objects.append(cand)
            owner = new_owner
    return objects, owner


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A desaturated, textured, noisy background (float32 RGB), so that shapes are not trivially
    separable by thresholding and colour stays the objects' cue."""
    base = rng.uniform(60, 170) + rng.uniform(-15, 15, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    # Low-frequency colour blotches.
    coarse = rng.normal(0, 1, (6, 6, 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 30)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    texture = int(rng.integers(3))
    if texture == 0:  # stripes at a random angle and frequency
        a = rng.uniform(0, np.pi)
        img += (np.sin((xx * np.cos(a) + yy * np.sin(a)) * rng.uniform(10, 60)) * rng.uniform(6, 18))[..., None]
    elif texture == 1:  # checkerboard
        n = int(rng.integers(4, 16))
        img += (((np.floor(xx * n) + np.floor(yy * n)) % 2 - 0.5) * rng.uniform(10, 30))[..., None]
    else:  # fine grain
        grain = rng.normal(0, 1, (size // 4, size // 4)).astype(np.float32)
        img += (cv2.resize(grain, (size, size), interpolation=cv2.INTER_LINEAR) * rng.uniform(8, 20))[..., None]
    # A few grey distractor lines.
    for _ in range(int(rng.integers(0, 4))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        grey = float(rng.uniform(30, 220))
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (grey, grey, grey), int(rng.integers(1, 4)))
    return img


def _render(rng: np.random.Generator, size: int, objects: List[_Object], owner: np.ndarray) -> np.ndarray:
    """Paint the scene (uint8 RGB): background, then every object's visible part with a shading
    gradient, then a slight blur and sensor noise."""
    img = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for k, obj in enumerate(objects, start=1):
        visible = owner == k
        a = rng.uniform(0, 2 * np.pi)
        # Linear shading of at most +-20% across the image, in a random direction.
        shade = 1.0 + rng.uniform(0.05, 0.14) * 2 * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a))
        img[visible] = obj.colour * shade[visible][:, None]
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _annotation(visible: np.ndarray, obj: _Object, ann_id: int, image_id: int) -> Dict:
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


def _image_file_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _label_file_name(index: int) -> str:
    return f"{index:06d}.png"


def _label_map(objects: List[_Object], owner: np.ndarray) -> np.ndarray:
    """uint8 semantic labels of a scene: 1 + class index of the visible object, 0 = background."""
    classes = np.array([0] + [obj.class_index + 1 for obj in objects], dtype=np.uint8)
    return classes[owner]


def _write_encoded(path: str, image: np.ndarray, ext: str, params: Sequence[int] = ()) -> None:
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _generate_split(out_dir: str, split: str, num_images: int, image_size: int, seed: int) -> Dict:
    """Write ``out_dir/<split>/*.jpg`` and ``out_dir/sem_seg/<split>/*.png``; return the split's COCO dict."""
    os.makedirs(os.path.join(out_dir, split))
    os.makedirs(os.path.join(out_dir, "sem_seg", split))
    images, annotations = [], []
    for index in range(num_images):
        # One independent stream per image: the dataset does not depend on the generation order,
        # and each split is reproducible on its own.
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        objects, owner = _place_objects(rng, image_size)
        image = _render(rng, image_size, objects, owner)
        file_name = _image_file_name(index)
        _write_encoded(
            os.path.join(out_dir, split, file_name), image[:, :, ::-1], ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        _write_encoded(os.path.join(out_dir, "sem_seg", split, _label_file_name(index)), _label_map(objects, owner), ".png")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for k, obj in enumerate(objects, start=1):
            annotations.append(_annotation(owner == k, obj, len(annotations) + 1, image_id))
    return {
        "info": {"description": "DenseCLIP synthetic shapes", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHETIC_CLASSES)],
    }


def _paths(root: str) -> Dict[str, str]:
    return {
        "root": root,
        "manifest": os.path.join(root, MANIFEST_NAME),
        **{f"{s}_json": os.path.join(root, "annotations", f"instances_{s}.json") for s in SPLITS},
        **{f"{s}_image_root": os.path.join(root, s) for s in SPLITS},
        **{f"{s}_sem_seg_root": os.path.join(root, "sem_seg", s) for s in SPLITS},
    }


def _manifest(num_train: int, num_val: int, image_size: int, seed: int) -> Dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "classes": SYNTHETIC_CLASSES,
    }


def _is_up_to_date(root: str, manifest: Dict) -> bool:
    """Whether ``root`` holds a complete dataset generated with exactly these parameters."""
    paths = _paths(root)
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
            os.path.isfile(os.path.join(paths[f"{s}_image_root"], _image_file_name(i)))
            and os.path.isfile(os.path.join(paths[f"{s}_sem_seg_root"], _label_file_name(i)))
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
    root: str, num_train: int = 240, num_val: int = 60, image_size: int = 256, seed: int = 0
) -> Dict[str, str]:
    """Generate the synthetic shapes dataset under ``root`` unless it is already there.

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
    root = os.path.abspath(os.fspath(root))
    paths = _paths(root)
    manifest = _manifest(num_train, num_val, image_size, seed)
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
                coco = _generate_split(tmp, split, n, image_size, seed)
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
            "file_name": os.path.join(image_root, _image_file_name(i)),
            "sem_seg_file_name": os.path.join(label_root, _label_file_name(i)),
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
    paths = _paths(root)

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
