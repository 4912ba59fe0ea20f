"""How a language-guided model's scores move with its vocabulary (issue 28), on the synthetic
open-vocabulary split: one trained model, the same validation images, three vocabularies:

- the 24 training (base) names,
- base + novel: all 36 names (the generalized setting),
- a handful: two base and two novel names.

For the handful's four classes (present in every vocabulary where they can be: the training names
hold only its two base ones) it reports box AP50 and the mean "right-label score" of their objects:
for each ground-truth object, the highest score of a detection with its label and IoU >= 0.5 (0 when
there is none). Same objects, same weights: any difference comes from the other names in the
vocabulary (the context decoder's self-attention over the classes, and for Fast R-CNN's softmax the
competing classes). Used by tools/open_vocabulary_synthetic.py --vocabulary-study.
"""
import contextlib
import io
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

HANDFUL = ["red circle", "blue square", "red square", "green star"]  # base, base, novel, novel


def _right_label_scores(records: List[Dict], predictions: List, names: Sequence[str], all_names: Sequence[str],
                        classes: Sequence[str]) -> Dict[str, List[float]]:
    import torch
    from detectron2.structures import Boxes, BoxMode, pairwise_iou

    scores: Dict[str, List[float]] = {c: [] for c in classes}
    for record, instances in zip(records, predictions):
        for a in record["annotations"]:
            name = all_names[a["category_id"]]
            if name not in scores:
                continue
            if name not in names:
                continue
            box = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)], dtype=torch.float32))
            same = instances[instances.pred_classes == names.index(name)]
            if len(same) == 0:
                scores[name].append(0.0)
                continue
            hits = pairwise_iou(box, same.pred_boxes)[0] >= 0.5
            scores[name].append(float(same.scores[hits].max()) if hits.any() else 0.0)
    return scores


def _ap50(records: List[Dict], predictions: List, names: Sequence[str], all_names: Sequence[str], classes: Sequence[str]) -> float:
    """Box AP50 (%) over ``classes`` (those in ``names``) with pycocotools on the records' ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = [c for c in classes if c in names]
    if not classes:
        return float("nan")
    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(all_names)]}
    dt = []
    for record, instances in zip(records, predictions):
        gt["images"].append({"id": record["image_id"], "height": record["height"], "width": record["width"]})
        for a in record["annotations"]:
            x, y, w, h = a["bbox"]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": record["image_id"], "bbox": [x, y, w, h],
                                      "area": w * h, "iscrowd": 0, "category_id": a["category_id"] + 1})
        for box, score, label in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()):
            dt.append({"image_id": record["image_id"], "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                       "score": score, "category_id": all_names.index(names[label]) + 1})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not dt:
            return 0.0
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(dt), "bbox")
        evaluation.params.catIds = [all_names.index(c) + 1 for c in classes]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[1]) * 100


def vocabulary_study(config: Path, run_dir: Path, small_clip: str, opts: Sequence[str], num_images: int = 60) -> None:
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from denseclip.data import SYNTHETIC_OV_BASE_CLASSES
    from denseclip.engine import build_config
    from denseclip.predictor import DenseCLIPPredictor

    cfg = build_config(str(run_dir / "config.yaml"), ["MODEL.WEIGHTS", str(run_dir / "model_final.pth"), "MODEL.DEVICE", "cpu",
                                                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01])
    predictor = DenseCLIPPredictor(cfg)
    all_names = list(MetadataCatalog.get("synthetic_shapes_ov_val").thing_classes)
    records = DatasetCatalog.get("synthetic_shapes_ov_val")[:num_images]
    images = [cv2.imread(r["file_name"]) for r in records]
    vocabularies = {"training names (24)": list(SYNTHETIC_OV_BASE_CLASSES), "base + novel (36)": all_names,
                    "a handful (4)": HANDFUL}
    print(f"Vocabulary study ({run_dir}, {num_images} validation images): the handful's classes "
          f"{HANDFUL[:2]} (base) and {HANDFUL[2:]} (novel)")
    print("| vocabulary | AP50 base pair | AP50 novel pair | right-label score, base pair | right-label score, novel pair |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for title, names in vocabularies.items():
        predictor.set_vocabulary(names)
        predictions = [predictor(image)["instances"].to("cpu") for image in images]
        scores = _right_label_scores(records, predictions, names, all_names, HANDFUL)

        def mean(classes: Sequence[str]) -> str:
            values = [v for c in classes if c in names for v in scores[c]]
            return f"{statistics.mean(values):.3f} ({len(values)} objects)" if values else "-"

        base_ap, novel_ap = (_ap50(records, predictions, names, all_names, pair) for pair in (HANDFUL[:2], HANDFUL[2:]))
        print(f"| {title} | {base_ap:.1f} | {novel_ap:.1f} | {mean(HANDFUL[:2])} | {mean(HANDFUL[2:])} |", flush=True)
