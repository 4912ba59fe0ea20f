"""A small LVIS v1-format json made from tiny_coco, for the OV-LVIS tests.

Every LVIS v1 category (ids 1..1203, names, synonyms, definitions from Detectron2's LVIS metadata),
tiny_coco's images with LVIS's per-image fields (``coco_url``, ``not_exhaustive_category_ids``,
``neg_category_ids``) and its non-crowd annotations relabelled with the LVIS category of the same
name or synonym (71 of COCO's 80 classes have one). The frequency groups are this json's own: every
tiny_coco class is "frequent" in real LVIS, so the LVIS categories of OV-COCO's novel classes are
made rare and every other matched one alternately common and frequent; unmatched categories keep
LVIS's frequency (they have no annotations here).
"""
import json
from pathlib import Path
from typing import Dict

from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from denseclip.data import OV_COCO_NOVEL_CLASSES


def lvis_category_of_coco_names() -> Dict[str, dict]:
    by_name = {c["name"]: c for c in LVIS_CATEGORIES}
    by_synonym = {s: c for c in LVIS_CATEGORIES for s in c["synonyms"]}
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    matched = {}
    for coco in COCO_CATEGORIES:
        key = coco["name"].replace(" ", "_")
        category = by_name.get(key) or by_synonym.get(key)
        if coco["isthing"] and category is not None:
            matched[coco["name"]] = category
    return matched


def write_tiny_lvis(tiny_coco_root: Path, split: str, out: Path) -> Path:
    """``out``: tiny_coco's ``split`` ("train2017" or "val2017") as an LVIS v1 json."""
    coco = json.loads((tiny_coco_root / "annotations" / f"instances_{split}.json").read_text())
    coco_names = {c["id"]: c["name"] for c in coco["categories"]}
    matched = lvis_category_of_coco_names()
    frequency = {c["id"]: c["frequency"] for c in LVIS_CATEGORIES}
    for i, (name, category) in enumerate(sorted(matched.items())):
        frequency[category["id"]] = "r" if name in OV_COCO_NOVEL_CLASSES else ("c" if i % 2 else "f")
    annotations = []
    for a in coco["annotations"]:
        name = coco_names[a["category_id"]]
        if a.get("iscrowd", 0) or name not in matched or not isinstance(a["segmentation"], list):
            continue
        annotations.append({"id": len(annotations) + 1, "image_id": a["image_id"], "bbox": a["bbox"], "area": a["area"],
                            "segmentation": a["segmentation"], "category_id": matched[name]["id"]})
    present: Dict[int, set] = {}
    for a in annotations:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    all_present = sorted({c for ids in present.values() for c in ids})
    images = []
    for image in coco["images"]:
        ids = present.get(image["id"], set())
        images.append({
            "id": image["id"], "width": image["width"], "height": image["height"],
            "coco_url": f"http://images.cocodataset.org/{split}/{image['file_name']}",
            # LVIS's federated labels: classes verified absent (here: those of other images), and none
            # marked as not exhaustively annotated.
            "neg_category_ids": [c for c in all_present if c not in ids][:5], "not_exhaustive_category_ids": [],
        })
    counts = {c["id"]: 0 for c in LVIS_CATEGORIES}
    for a in annotations:
        counts[a["category_id"]] += 1
    categories = [{"id": c["id"], "name": c["name"], "synonyms": c["synonyms"], "def": c["def"], "synset": c["synset"],
                   "frequency": frequency[c["id"]], "instance_count": counts[c["id"]],
                   "image_count": sum(c["id"] in ids for ids in present.values())} for c in LVIS_CATEGORIES]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out
