"""Register any folder of images plus label PNGs as a Detectron2 semantic segmentation dataset.

A label PNG is single-channel (mode "L", or "P" read as palette indices), of its image's size, with
the class index of each pixel (0 .. K-1 in the order of the classes file) and 255 for pixels to
ignore. It pairs with the image of the same relative path and stem (``images/a/b.jpg`` with
``labels/a/b.png``). The classes file has one name per line, line i naming label value i.

As for COCO jsons (``register.py``), everything is checked once at registration, with errors that
name the file and the problem, instead of surfacing in a data loader worker minutes later: missing
folders, images without labels, labels that are not single-channel, label and image sizes that
differ, and label values outside the classes.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .mapper import BadImageError, read_label_map

logger = logging.getLogger(__name__)

SEM_SEG_SPEC_PREFIX = "sem_seg:"
SEM_SEG_SPEC_FORMAT = "name=sem_seg:path/to/images:path/to/labels:path/to/classes.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_LABEL = 255
# EXIF orientations that swap width and height (the loader applies them, as Detectron2's does).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

_SUMMARIES: Dict[str, Dict[str, Any]] = {}


def _examples(values: Sequence, n: int = 5) -> str:
    shown = ", ".join(str(v) for v in list(values)[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def read_class_names(classes_file: str) -> List[str]:
    """Class names of a classes file: one per line, line i naming label value i. Trailing blank
    lines are ignored; an empty line before the last name, a duplicated name, or more than 255
    classes (255 is the ignore label) is an error naming the file and the line."""
    classes_file = os.fspath(classes_file)
    if not os.path.isfile(classes_file):
        raise FileNotFoundError(f"Classes file not found: {classes_file} (one class name per line, line i = label value i)")
    with open(classes_file, encoding="utf-8") as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise ValueError(f"{classes_file} names no classes (one class name per line, line i = label value i)")
    for i, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"{classes_file}, line {i + 1}: empty class name (label value {i} needs a name)")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{classes_file}: duplicated class names {duplicated}")
    if len(names) > IGNORE_LABEL:
        raise ValueError(f"{classes_file} names {len(names)} classes; at most {IGNORE_LABEL} fit in 8-bit labels with 255 = ignore")
    return names


def _image_size(path: str) -> Tuple[int, int]:
    """(width, height) of an image as the loader decodes it (EXIF orientation applied); reads the header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return width, height


def _pair_files(image_root: str, label_root: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(image, label) pairs by relative path and stem, and the images that have no label. Two
    images of the same stem (a.jpg and a.png) would both be paired with a.png: an error naming them."""
    pairs, unlabelled = [], []
    images_of_label: Dict[str, List[str]] = {}
    for folder, dirs, files in os.walk(image_root):
        dirs.sort()
        for file in sorted(files):
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                continue
            image = os.path.join(folder, file)
            label = os.path.join(label_root, os.path.splitext(os.path.relpath(image, image_root))[0] + ".png")
            if os.path.isfile(label):
                pairs.append((image, label))
                images_of_label.setdefault(label, []).append(os.path.relpath(image, image_root))
            else:
                unlabelled.append(os.path.relpath(image, image_root))
    shared = {label: images for label, images in images_of_label.items() if len(images) > 1}
    if shared:
        label, images = next(iter(shared.items()))
        raise ValueError(
            f"{len(shared)} label PNG(s) in {label_root} would label two or more images of the same name: "
            f"{os.path.relpath(label, label_root)} <- {' and '.join(images)} in {image_root}"
            f"{f' (and {len(shared) - 1} more)' if len(shared) > 1 else ''}. Keep one image per name (move or rename the others)"
        )
    return pairs, unlabelled


def _inspect(pair: Tuple[str, str]) -> Dict[str, Any]:
    image, label = pair
    try:
        size = _image_size(image)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        return {"image": image, "label": label, "error": f"{image}: not a readable image ({type(e).__name__}: {e})"}
    try:
        labels = read_label_map(label)
    except BadImageError as e:
        return {"image": image, "label": label, "error": str(e)}
    return {"image": image, "label": label, "size": size, "label_size": labels.shape[::-1], "values": np.unique(labels)}


def validate_sem_seg_folder(image_root: str, label_root: str, num_classes: int) -> Dict[str, Any]:
    """Check a folder pair and return its summary (records, pixel counts per class).

    Raises FileNotFoundError for a missing folder, ValueError naming the files for: no images,
    images without a label PNG, two images paired with one label PNG (a.jpg and a.png), unreadable
    images, labels that are not single-channel, a label whose size differs from its image's, labels
    whose every pixel is 255 (ignore), and label values that are neither a class index
    (0 .. num_classes - 1) nor 255. Label PNGs without an image are logged and ignored.
    """
    image_root, label_root = os.fspath(image_root), os.fspath(label_root)
    for what, folder in (("Image", image_root), ("Label", label_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    pairs, unlabelled = _pair_files(image_root, label_root)
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} image(s) in {image_root} have no label PNG of the same name in {label_root}: "
            f"{_examples(unlabelled)}"
        )
    if not pairs:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {image_root}")
    paired_labels = {os.path.normpath(label) for _, label in pairs}
    extra = [
        os.path.relpath(os.path.join(d, f), label_root)
        for d, _, files in os.walk(label_root)
        for f in files
        if f.lower().endswith(".png") and os.path.normpath(os.path.join(d, f)) not in paired_labels
    ]
    if extra:
        logger.warning(f"{label_root}: {len(extra)} label PNG(s) have no image in {image_root}; ignored: {_examples(extra)}")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        inspected = list(pool.map(_inspect, pairs))
    errors = [r["error"] for r in inspected if "error" in r]
    if errors:
        raise ValueError(f"{len(errors)} unusable file(s) in {image_root} / {label_root}: " + "; ".join(errors[:5]))
    mismatched = [
        f"{os.path.relpath(r['label'], label_root)} is {r['label_size'][0]}x{r['label_size'][1]}, its image "
        f"{r['size'][0]}x{r['size'][1]}"
        for r in inspected
        if tuple(r["label_size"]) != tuple(r["size"])
    ]
    if mismatched:
        raise ValueError(f"{len(mismatched)} label(s) in {label_root} differ in size from their image: {_examples(mismatched)}")
    outside: Dict[int, List[str]] = {}
    for r in inspected:
        for value in r["values"].tolist():
            if value >= num_classes and value != IGNORE_LABEL:
                outside.setdefault(value, []).append(os.path.relpath(r["label"], label_root))
    if outside:
        files = sorted({f for fs in outside.values() for f in fs})
        raise ValueError(
            f"Label values {sorted(outside)} in {label_root} are outside the {num_classes} classes (valid: 0-"
            f"{num_classes - 1}, and {IGNORE_LABEL} = ignore), in {len(files)} file(s): {_examples(files)}"
        )
    if all(set(r["values"].tolist()) <= {IGNORE_LABEL} for r in inspected):
        raise ValueError(
            f"Every pixel of the {len(inspected)} label PNG(s) in {label_root} is {IGNORE_LABEL} (= ignore): there is "
            f"nothing to train or evaluate on (the loss would be 0 and mIoU nan). Label the pixels with their class "
            f"index (0-{num_classes - 1}, in the order of the classes file); 255 marks only pixels to ignore"
        )
    records = [
        {"file_name": r["image"], "sem_seg_file_name": r["label"], "width": r["size"][0], "height": r["size"][1]}
        for r in inspected
    ]
    logger.info(f"{image_root}: {len(records)} images with labels in {label_root}")
    return {"image_root": image_root, "label_root": label_root, "num_images": len(records), "records": records}


def register_sem_seg_folder(
    name: str, image_root: str, label_root: str, classes: Union[str, Sequence[str]]
) -> Dict[str, Any]:
    """Validate a folder of images and label PNGs (:func:`validate_sem_seg_folder`) and register
    it as ``name`` with metadata stuff_classes (the model's vocabulary), ignore_label 255 and
    evaluator_type "sem_seg" (Detectron2's SemSegEvaluator). ``classes``: a classes file (one
    name per line) or the names. Registering the same name with the same folders again does
    nothing; with other folders it raises. Returns the validation summary."""
    image_root, label_root = os.fspath(image_root), os.fspath(label_root)
    names = read_class_names(classes) if isinstance(classes, (str, os.PathLike)) else list(classes)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        known = (getattr(meta, "image_root", None), getattr(meta, "sem_seg_root", None), getattr(meta, "stuff_classes", None))
        if name in _SUMMARIES and known == (image_root, label_root, names):
            return _SUMMARIES[name]
        raise ValueError(
            f"A dataset named {name!r} is already registered (image_root={known[0]!r}); choose another name "
            f"for {image_root}"
        )
    summary = validate_sem_seg_folder(image_root, label_root, len(names))
    records = summary["records"]
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(
        stuff_classes=names,
        ignore_label=IGNORE_LABEL,
        evaluator_type="sem_seg",
        image_root=image_root,
        sem_seg_root=label_root,
    )
    _SUMMARIES[name] = summary
    logger.info(f"Registered dataset {name!r}: {summary['num_images']} images in {image_root}, {len(names)} classes")
    return summary


def is_sem_seg_spec(spec: str) -> bool:
    return spec.partition("=")[2].startswith(SEM_SEG_SPEC_PREFIX)


def parse_sem_seg_spec(spec: str) -> Tuple[str, str, str, str]:
    """Split "name=sem_seg:image_root:label_root:classes_file" into its four parts (paths
    containing ":" cannot be given this way; call :func:`register_sem_seg_folder` instead)."""
    name, _, paths = spec.partition("=")
    parts = paths[len(SEM_SEG_SPEC_PREFIX):].split(":")
    if not name.strip() or len(parts) != 3 or not all(parts):
        raise ValueError(
            f"Cannot parse semantic segmentation dataset spec {spec!r}: expected {SEM_SEG_SPEC_FORMAT!r} "
            "(three paths after 'sem_seg:', none containing ':')"
        )
    return (name.strip(), *parts)
