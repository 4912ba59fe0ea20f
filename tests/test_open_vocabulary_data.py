"""OV-COCO and OV-LVIS (issue 28): training sets without the novel classes' annotations, evaluators
reporting novel/base/all AP50 (COCO) and APr/APc/APf/AP (LVIS), and evaluation with every name.
On tiny_coco (skipped when absent) and a small LVIS-format json made from it (tests/tiny_lvis.py)."""
import json
import math

import pytest
import torch
from conftest import load_config
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks
from tiny_lvis import write_tiny_lvis

from denseclip.data import OV_COCO_BASE_CLASSES, OV_COCO_NOVEL_CLASSES, register_ov_coco, register_ov_lvis
from denseclip.evaluation import CompatibleLVISEvaluator, OpenVocabularyCOCOEvaluator, evaluation_model

SYNTHETIC = "Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"


def _register(name, register, *args):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register(name, *args)
    return name


def _ground_truth_as_predictions(records, keep=lambda category_id: True):
    """Each image's non-crowd ground truth as detections (score 1, polygon masks rasterised)."""
    for record in records:
        annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0) and keep(a["category_id"])]
        h, w = record["height"], record["width"]
        instances = Instances((h, w))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)
        masks = PolygonMasks([a["segmentation"] for a in annotations])
        instances.pred_masks = _rasterise(masks, h, w)
        yield [{"image_id": record["image_id"]}], [{"instances": instances}]


def _rasterise(masks: PolygonMasks, h: int, w: int) -> torch.Tensor:
    from detectron2.structures.masks import polygons_to_bitmask

    return torch.stack([torch.from_numpy(polygons_to_bitmask(p, h, w)) for p in masks.polygons]) if len(masks) else \
        torch.zeros(0, h, w, dtype=torch.bool)


def _evaluate(evaluator, name, keep=lambda category_id: True):
    evaluator.reset()
    for inputs, outputs in _ground_truth_as_predictions(DatasetCatalog.get(name), keep):
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_ov_coco_split_is_ovr_cnns():
    coco_names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    assert len(OV_COCO_BASE_CLASSES) == 48 and len(OV_COCO_NOVEL_CLASSES) == 17
    assert not set(OV_COCO_BASE_CLASSES) & set(OV_COCO_NOVEL_CLASSES)
    assert set(OV_COCO_BASE_CLASSES) | set(OV_COCO_NOVEL_CLASSES) <= set(coco_names)
    for name in ("coco_2017_ov_train_base", "coco_2017_ov_val_generalized", "lvis_v1_ov_train_norare", "lvis_v1_ov_val"):
        assert name in DatasetCatalog.list()
    assert len(MetadataCatalog.get("lvis_v1_ov_train_norare").thing_classes) == 866
    assert len(MetadataCatalog.get("lvis_v1_ov_val").novel_classes) == 337


def test_ov_coco_training_set_drops_novel_annotations_and_keeps_images(tiny_coco_root):
    json_file = tiny_coco_root / "annotations" / "instances_train2017.json"
    name = _register("tiny_coco_ov_train_base", register_ov_coco, str(json_file), str(tiny_coco_root / "train2017"), "train_base")
    records = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    assert len(records) == 50 and len(metadata.thing_classes) == 48 and set(metadata.thing_classes) == set(OV_COCO_BASE_CLASSES)
    coco = json.loads(json_file.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = sum(names[a["category_id"]] in OV_COCO_BASE_CLASSES for a in coco["annotations"])
    novel_in_json = sum(names[a["category_id"]] in OV_COCO_NOVEL_CLASSES for a in coco["annotations"])
    kept = [metadata.thing_classes[a["category_id"]] for r in records for a in r["annotations"]]
    assert len(kept) == expected and novel_in_json > 0 and set(kept) <= set(OV_COCO_BASE_CLASSES)


def test_ov_coco_evaluator_reports_novel_base_and_all_ap50(tiny_coco_root, tmp_path):
    json_file = tiny_coco_root / "annotations" / "instances_val2017.json"
    name = _register("tiny_coco_ov_val", register_ov_coco, str(json_file), str(tiny_coco_root / "val2017"), "val_generalized")
    metadata = MetadataCatalog.get(name)
    assert len(metadata.thing_classes) == 65 and sorted(metadata.novel_classes) == sorted(OV_COCO_NOVEL_CLASSES)
    assert all(r["annotations"] for r in DatasetCatalog.get(name))  # images with one of the 65 classes
    evaluator = OpenVocabularyCOCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path),
                                            use_fast_impl=False)
    perfect = _evaluate(evaluator, name)
    for task in ("bbox", "segm"):
        assert perfect[task]["AP50_novel"] == pytest.approx(100) and perfect[task]["AP50_base"] == pytest.approx(100)
        assert perfect[task]["AP50_all"] == pytest.approx(100)
    novel_ids = {metadata.thing_classes.index(n) for n in metadata.novel_classes}
    without_novel = _evaluate(evaluator, name, keep=lambda c: c not in novel_ids)
    box = without_novel["bbox"]
    assert box["AP50_novel"] == 0 and box["AP50_base"] == pytest.approx(100)
    assert 0 < box["AP50_all"] < 100 and without_novel["segm"]["AP50_novel"] == 0


@pytest.fixture
def tiny_lvis(tiny_coco_root, tmp_path):
    train = write_tiny_lvis(tiny_coco_root, "train2017", tmp_path / "lvis_train.json")
    val = write_tiny_lvis(tiny_coco_root, "val2017", tmp_path / "lvis_val.json")
    root = str(tiny_coco_root) + "/"
    return (_register("tiny_lvis_ov_train", register_ov_lvis, str(train), root, "train_base"),
            _register("tiny_lvis_ov_val", register_ov_lvis, str(val), root, "val_generalized"), train)


def test_ov_lvis_training_set_drops_rare_annotations_and_keeps_images(tiny_lvis):
    train_name, _, train_json = tiny_lvis
    lvis = json.loads(train_json.read_text())
    frequency = {c["id"]: c["frequency"] for c in lvis["categories"]}
    records = DatasetCatalog.get(train_name)
    metadata = MetadataCatalog.get(train_name)
    assert len(records) == len(lvis["images"]) == 50
    assert len(metadata.thing_classes) == sum(f != "r" for f in frequency.values())
    rare_in_json = sum(frequency[a["category_id"]] == "r" for a in lvis["annotations"])
    kept = [a for r in records for a in r["annotations"]]
    assert rare_in_json > 0 and len(kept) == len(lvis["annotations"]) - rare_in_json
    to_lvis = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    assert all(frequency[to_lvis[a["category_id"]]] != "r" for a in kept)
    assert "neg_category_ids" in records[0] and "not_exhaustive_category_ids" in records[0]


def test_lvis_evaluator_reports_apr_apc_apf_for_boxes_and_masks(tiny_lvis, tmp_path):
    _, val_name, _ = tiny_lvis
    metadata = MetadataCatalog.get(val_name)
    assert len(metadata.thing_classes) == 1203
    evaluator = CompatibleLVISEvaluator(val_name, tasks=("bbox", "segm"), distributed=False, output_dir=str(tmp_path))
    perfect = _evaluate(evaluator, val_name)
    for task in ("bbox", "segm"):
        for key in ("AP", "APr", "APc", "APf"):
            assert perfect[task][key] == pytest.approx(100, abs=0.5), (task, key, perfect[task])
    rare = {metadata.thing_classes.index(n) for n in metadata.novel_classes}
    without_rare = _evaluate(evaluator, val_name, keep=lambda c: c not in rare)["bbox"]
    assert without_rare["APr"] == 0 and without_rare["APf"] == pytest.approx(100, abs=0.5)
    assert not hasattr(__import__("numpy"), "float") or "float" not in __import__("numpy").__dict__


def test_open_vocabulary_evaluation_runs_with_every_name_on_a_copy(tiny_coco_root, tmp_path):
    from detectron2.modeling import build_model

    from denseclip.engine import Trainer

    train = _register("tiny_coco_ov_train_base", register_ov_coco, str(tiny_coco_root / "annotations" / "instances_train2017.json"),
                      str(tiny_coco_root / "train2017"), "train_base")
    val = _register("tiny_coco_ov_val", register_ov_coco, str(tiny_coco_root / "annotations" / "instances_val2017.json"),
                    str(tiny_coco_root / "val2017"), "val_generalized")
    cfg = load_config(SYNTHETIC, ["DATASETS.TRAIN", (train,), "DATASETS.TEST", (val,), "INPUT.MIN_SIZE_TEST", 96,
                                  "INPUT.MAX_SIZE_TEST", 128, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
                                  "TEST.DETECTIONS_PER_IMAGE", 10, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                                  "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path)])
    model = build_model(cfg).eval()
    assert model.class_names == list(MetadataCatalog.get(train).thing_classes)
    parameters = [id(p) for p in model.parameters()]
    copy = evaluation_model(model, val)
    assert copy is not model and copy.class_names == list(MetadataCatalog.get(val).thing_classes)
    results = Trainer.test(cfg, model)
    for task in ("bbox", "segm"):
        assert {"AP50_novel", "AP50_base", "AP50_all"} <= set(results[task])
        assert all(math.isfinite(results[task][k]) for k in ("AP50_novel", "AP50_base", "AP50_all"))
    assert len(model.class_names) == 48 and [id(p) for p in model.parameters()] == parameters

    stock = build_model(load_config("COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", [
        "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "DATASETS.TRAIN", (train,)]))
    with pytest.raises(ValueError, match="open-vocabulary evaluation set .* language-guided heads"):
        evaluation_model(stock, val)


def test_synthetic_held_out_split_shows_every_novel_colour_and_shape_in_base():
    from denseclip.data import SYNTHETIC_OV_BASE_CLASSES, SYNTHETIC_OV_NOVEL_CLASSES, grid_cell, held_out_split

    assert len(SYNTHETIC_OV_BASE_CLASSES) == 24 and len(SYNTHETIC_OV_NOVEL_CLASSES) == 12
    base_cells = [grid_cell(n) for n in SYNTHETIC_OV_BASE_CLASSES]
    for name in SYNTHETIC_OV_NOVEL_CLASSES:
        colour, shape = grid_cell(name)
        assert any(c == colour for c, _ in base_cells) and any(s == shape for _, s in base_cells), name
    assert not set(SYNTHETIC_OV_BASE_CLASSES) & set(SYNTHETIC_OV_NOVEL_CLASSES)
    with pytest.raises(ValueError, match=r"novel classes \['red square'\] combine a colour or shape that no base class has"):
        held_out_split(["red square", "blue square"], novel_diagonals=(1,), block=6)  # no base class is red
    train, val = (MetadataCatalog.get(n) for n in ("synthetic_shapes_ov_train_base", "synthetic_shapes_ov_val"))
    assert train.thing_classes == list(SYNTHETIC_OV_BASE_CLASSES) and not train.get("novel_classes", None)
    assert len(val.thing_classes) == 36 and val.novel_classes == list(SYNTHETIC_OV_NOVEL_CLASSES)
