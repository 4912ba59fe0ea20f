"""Register any COCO-format instances json with Detectron2, validating it first.

Detectron2's ``register_coco_instances`` is lazy: a missing file, a json that is not COCO or an
annotation with an unknown category id only surfaces when the training loader is built, possibly
after minutes of setup on every node, and some of those problems surface as a bare ``KeyError`` or
``AssertionError``. ``register_coco_json`` reads the json once at registration and stops with an
error naming the file and the problem; problems the loader can fix (boxes outside the image,
invalid polygons) are counted and logged instead, and fixed per sample by
``RobustDatasetMapper``.
"""
import json
import logging
import math
import os
from collections import Counter
from typing import Any, Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .sem_seg_folder import SEM_SEG_SPEC_FORMAT, is_sem_seg_spec, parse_sem_seg_spec, register_sem_seg_folder

logger = logging.getLogger(__name__)

COCO_REQUIRED_KEYS = ("images", "annotations", "categories")
COCO_FORMAT_HELP = (
    'A COCO instances json is an object with "images" (a list of {"id", "file_name", "width", '
    '"height"}), "annotations" (a list of {"id", "image_id", "category_id", "bbox": [x, y, width, '
    'height], "iscrowd", and optionally "segmentation" as polygons or RLE}) and "categories" (a list '
    'of {"id", "name"}). See https://cocodataset.org/#format-data.'
)
DATASET_SPEC_FORMAT = "name=path/to/instances.json:path/to/image_root"
TINY_COCO_SPLITS = {"tiny_coco_train": "train2017", "tiny_coco_val": "val2017"}

# Validation summaries by dataset name, so that registering the same dataset twice (e.g. once
# from the command line and once from the config) validates it once.
_SUMMARIES: Dict[str, Dict[str, Any]] = {}


def _examples(values: Sequence, n: int = 10) -> str:
    shown = ", ".join(str(v) for v in list(values)[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _sorted_ids(ids) -> List:
    """Ids sorted numerically, or as text when a broken json mixes numbers and strings."""
    try:
        return sorted(ids)
    except TypeError:
        return sorted(ids, key=str)


def _require_fields(json_file: str, section: str, records: List, fields: Tuple[str, ...]) -> None:
    """Raise when records of a section lack fields that Detectron2's loader indexes directly."""
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or any(f not in r for f in fields)]
    if bad:
        raise ValueError(
            f"{json_file}: {len(bad)} of the {len(records)} entries of \"{section}\" lack one of the "
            f"required fields {list(fields)} (entries at positions {_examples(bad)}). {COCO_FORMAT_HELP}"
        )


def _require_unique(json_file: str, section: str, ids: List) -> None:
    duplicated = _sorted_ids(i for i, n in Counter(ids).items() if n > 1)
    if duplicated:
        raise ValueError(f"{json_file}: ids in \"{section}\" are not unique; duplicated: {_examples(duplicated)}")


def _is_box(bbox: Any) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )


def validate_coco_json(json_file: str) -> Dict[str, Any]:
    """Check that ``json_file`` is a loadable COCO instances json and summarise its content.

    Raises FileNotFoundError when the file is missing, and ValueError, naming the file, for what
    would crash or silently corrupt training: invalid JSON, missing top-level keys, records
    without the fields the loader reads, duplicate ids, malformed boxes, and annotations whose
    category id is not in "categories".

    Counts and logs (without raising) what is fixed at load time: boxes reaching outside their
    image (clipped by RobustDatasetMapper), boxes with no area after clipping (dropped by it),
    polygons with fewer than 3 points (dropped by Detectron2's loader), instances left without
    any valid mask (dropped when masks are trained), annotations of images absent from "images"
    (ignored by the loader), crowd annotations and images without annotations (allowed).
    """
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file not found: {json_file}")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file} is not valid JSON ({e}). {COCO_FORMAT_HELP}") from e
    missing = [k for k in COCO_REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(
            f"{json_file} is not a COCO instances json: missing key(s) {missing}. {COCO_FORMAT_HELP}"
        )
    not_lists = [k for k in COCO_REQUIRED_KEYS if not isinstance(data[k], list)]
    if not_lists:
        raise ValueError(f"{json_file}: {not_lists} must be lists. {COCO_FORMAT_HELP}")
    images, annotations, categories = data["images"], data["annotations"], data["categories"]
    if not categories:
        raise ValueError(f"{json_file} has an empty \"categories\" list: there are no classes to learn.")

    _require_fields(json_file, "categories", categories, ("id", "name"))
    _require_fields(json_file, "images", images, ("id", "file_name", "width", "height"))
    _require_fields(json_file, "annotations", annotations, ("id", "image_id", "category_id", "bbox"))
    _require_unique(json_file, "categories", [c["id"] for c in categories])
    _require_unique(json_file, "images", [im["id"] for im in images])
    _require_unique(json_file, "annotations", [a["id"] for a in annotations])

    malformed = [a["id"] for a in annotations if not _is_box(a["bbox"])]
    if malformed:
        raise ValueError(
            f"{json_file}: {len(malformed)} annotation(s) have a \"bbox\" that is not 4 finite numbers "
            f"[x, y, width, height] (annotation ids {_examples(malformed)})."
        )
    category_ids = {c["id"] for c in categories}
    unknown = Counter(a["category_id"] for a in annotations if a["category_id"] not in category_ids)
    if unknown:
        raise ValueError(
            f"{json_file}: {sum(unknown.values())} annotation(s) use category ids that are not in "
            f"\"categories\": {_examples(_sorted_ids(unknown))}. Known ids: {_examples(_sorted_ids(category_ids))}. "
            "Add the missing categories or remove those annotations."
        )

    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    counts = Counter()
    annotated_images = set()
    for a in annotations:
        if a["image_id"] not in sizes:
            counts["orphan_annotations"] += 1
            continue
        if a.get("iscrowd", 0):
            counts["crowd"] += 1
            continue
        annotated_images.add(a["image_id"])
        width, height = sizes[a["image_id"]]
        x, y, w, h = a["bbox"]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            counts["boxes_degenerate"] += 1
        elif (x0, y0, x1, y1) != (x, y, x + w, y + h):
            counts["boxes_clipped"] += 1
        segm = a.get("segmentation")
        if isinstance(segm, dict):
            continue
        polygons = segm if isinstance(segm, list) else []
        valid = [p for p in polygons if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        counts["polygons_invalid"] += len(polygons) - len(valid)
        counts["instances_without_valid_mask"] += not valid

    summary: Dict[str, Any] = {
        "json_file": json_file,
        "num_images": len(images),
        "num_annotations": len(annotations),
        "num_categories": len(categories),
        "category_ids": _sorted_ids(category_ids),
        "thing_classes": [c["name"] for c in sorted(categories, key=lambda c: c["id"])],
        "num_crowd": counts["crowd"],
        "num_images_without_annotations": len(sizes.keys() - annotated_images),
        "num_orphan_annotations": counts["orphan_annotations"],
        "num_boxes_clipped": counts["boxes_clipped"],
        "num_boxes_degenerate": counts["boxes_degenerate"],
        "num_polygons_invalid": counts["polygons_invalid"],
        "num_instances_without_valid_mask": counts["instances_without_valid_mask"],
    }
    logger.info(
        f"{json_file}: {summary['num_images']} images, {summary['num_annotations']} annotations "
        f"({summary['num_crowd']} crowd), {summary['num_categories']} categories, "
        f"{summary['num_images_without_annotations']} images without (non-crowd) annotations"
    )
    fixes = {
        "num_boxes_clipped": "boxes reach outside their image; they are clipped to it at load time",
        "num_boxes_degenerate": "boxes have no area inside their image; those instances are dropped",
        "num_polygons_invalid": "polygons have fewer than 3 points; they are dropped",
        "num_instances_without_valid_mask": "non-crowd instances have no valid polygon or RLE mask; "
        "they are dropped when instance masks are trained (MODEL.MASK_ON)",
        "num_orphan_annotations": "annotations refer to image ids absent from \"images\"; they are ignored",
    }
    for key, what in fixes.items():
        if summary[key]:
            logger.warning(f"{json_file}: {summary[key]} {what}.")
    return summary


def register_coco_json(name: str, json_file: str, image_root: str) -> Dict[str, Any]:
    """Validate a COCO instances json (see ``validate_coco_json``) and register it as ``name``.

    The metadata gets thing_classes (the json's category names, by id), the category id mapping,
    json_file, image_root and evaluator_type "coco", all available before any data is loaded.
    Registering the same name with the same files again does nothing; with other files it raises,
    so a typo cannot silently shadow a dataset (Detectron2's builtin "coco_2017_train" included).
    Returns the validation summary.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if name in _SUMMARIES and (meta.json_file, meta.image_root) == (json_file, image_root):
            return _SUMMARIES[name]
        raise ValueError(
            f"A dataset named {name!r} is already registered (json_file="
            f"{getattr(meta, 'json_file', None)!r}); choose another name for {json_file}."
        )
    summary = validate_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder of dataset {name!r} not found: {image_root} (json: {json_file})")
    register_coco_instances(
        name,
        {
            "thing_classes": summary["thing_classes"],
            # Identical to what Detectron2's load_coco_json sets later, which it asserts.
            "thing_dataset_id_to_contiguous_id": {cid: i for i, cid in enumerate(summary["category_ids"])},
        },
        json_file,
        image_root,
    )
    _SUMMARIES[name] = summary
    logger.info(f"Registered dataset {name!r}: {json_file} with images in {image_root}")
    return summary


def parse_dataset_spec(spec: str) -> Tuple[str, str, str]:
    """Split "name=json_file:image_root" into its three parts.

    The json path ends at the first ":" that follows ".json" (so a Windows drive letter or a ":"
    in the image folder still parse); without ".json", at the last ":".
    """
    name, sep, paths = spec.partition("=")
    cut = paths.lower().find(".json:")
    json_file, image_root = (paths[: cut + 5], paths[cut + 6 :]) if cut >= 0 else paths.rpartition(":")[::2]
    if not (sep and name.strip() and json_file and image_root):
        raise ValueError(
            f"Cannot parse dataset spec {spec!r}: expected {DATASET_SPEC_FORMAT!r} (COCO json), or "
            f"{SEM_SEG_SPEC_FORMAT!r} (images and label PNGs)"
        )
    return name.strip(), json_file, image_root


def register_datasets_from_spec(specs: Sequence[str]) -> List[str]:
    """Register every spec of ``specs`` (the ``--dataset`` flag, or the config key
    DATASETS.REGISTER): "name=json_file:image_root" for a COCO-format json, or
    "name=sem_seg:image_root:label_root:classes_file" for a folder of images and label PNGs
    (``register_sem_seg_folder``). All specs are parsed before any is registered, so a typo in the
    last one is reported before the first one is validated. Returns the registered names."""
    parsed = [(parse_sem_seg_spec(s), register_sem_seg_folder) if is_sem_seg_spec(s) else (parse_dataset_spec(s), register_coco_json)
              for s in specs]
    for args, register in parsed:
        register(*args)
    return [args[0] for args, _ in parsed]


def register_tiny_coco(root: str) -> List[str]:
    """Register tiny_coco (a 50 + 50 image subset of COCO 2017 used by tests) as "tiny_coco_train"
    and "tiny_coco_val": ``root/annotations/instances_{train,val}2017.json`` with images in
    ``root/{train,val}2017``. Returns the two names."""
    root = os.fspath(root)
    for name, split in TINY_COCO_SPLITS.items():
        register_coco_json(name, os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split))
    return list(TINY_COCO_SPLITS)
