"""A trained model carries its vocabulary: checkpoints record the class names, per-class tensors are
matched by name when loading (another order, another vocabulary, fine-tuning), configs take the
names from their datasets (Detectron2's registration included), the predictor also from MODEL.WEIGHTS."""
import logging

import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from denseclip.checkpoint import read_checkpoint
from denseclip.data import register_datasets_from_config
from denseclip.engine import AtomicDetectionCheckpointer, build_config
from denseclip.modeling import check_run_vocabulary, vocabulary_from_config

TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32]
LANGUAGE = "COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml"
PAPER = "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"


def tiny_model(config_file, names, seed=0, *opts):
    torch.manual_seed(seed)
    return build_model(load_config(config_file, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", list(names), *opts])).eval()


def save(model, path):
    AtomicDetectionCheckpointer(model, str(path.parent)).save(path.stem)
    return str(path)


def column(model, name):
    lateral = model.fpn.fpn_lateral5.weight
    visual = lateral.shape[1] - len(model.class_names)
    return lateral[:, visual + model.class_names.index(name)]


def test_checkpoint_records_its_vocabulary_safely(tmp_path):
    model = tiny_model(LANGUAGE, ["cat", "dog"])
    path = save(model, tmp_path / "model_final.pth")
    assert torch.load(path, weights_only=True)["vocabulary"] == ["cat", "dog"]
    assert read_checkpoint(path)["vocabulary"] == ["cat", "dog"]


@pytest.mark.parametrize("config_file", [LANGUAGE, PAPER])
def test_same_names_in_another_order_load_by_name(config_file, tmp_path):
    names = ["cat", "dog", "sofa", "tree", "cup"]
    trained = tiny_model(config_file, names, 0)
    path = save(trained, tmp_path / "model_final.pth")
    shuffled = ["sofa", "cat", "cup", "dog", "tree"]
    model = tiny_model(config_file, shuffled, 1)
    AtomicDetectionCheckpointer(model).load(path)
    for name in names:
        assert torch.equal(column(model, name), column(trained, name)), name
    # The whole pyramid is the same function of the image: score maps and FPN columns moved together.
    images = ImageList(torch.randn(1, 3, 128, 160), [(128, 160)])
    with torch.no_grad():
        a, b = trained.extract_features(images), model.extract_features(images)
    for level in a.features:
        torch.testing.assert_close(a.features[level], b.features[level], atol=1e-4, rtol=1e-4)
    if config_file == PAPER:  # stock heads: the per-class rows follow the names too
        for name in names:
            i, j = names.index(name), shuffled.index(name)
            w_trained, w_model = trained.roi_heads.box_predictor, model.roi_heads.box_predictor
            assert torch.equal(w_model.cls_score.weight[j], w_trained.cls_score.weight[i])
            assert torch.equal(w_model.bbox_pred.weight[4 * j:4 * j + 4], w_trained.bbox_pred.weight[4 * i:4 * i + 4])
            assert torch.equal(model.roi_heads.mask_head.predictor.weight[j], trained.roi_heads.mask_head.predictor.weight[i])
        assert torch.equal(w_model.cls_score.weight[-1], w_trained.cls_score.weight[-1])  # background stays last


def test_other_vocabulary_at_inference_keeps_known_names_and_uses_the_mean(tmp_path):
    trained = tiny_model(LANGUAGE, ["cat", "dog"])
    path = save(trained, tmp_path / "model_final.pth")
    model = tiny_model(LANGUAGE, ["dog", "remote control", "sofa"], 1)
    AtomicDetectionCheckpointer(model).load(path)  # no shape error, no REINIT needed
    assert torch.equal(column(model, "dog"), column(trained, "dog"))
    mean = (column(trained, "cat") + column(trained, "dog")) / 2
    torch.testing.assert_close(column(model, "sofa"), mean)
    visual = trained.fpn.fpn_lateral5.weight.shape[1] - 2
    assert torch.equal(model.fpn.fpn_lateral5.weight[:, :visual], trained.fpn.fpn_lateral5.weight[:, :visual])


def test_fine_tuning_reinitialises_only_the_new_classes(tmp_path):
    trained = tiny_model(PAPER, ["cat", "dog", "bird"])
    path = save(trained, tmp_path / "model_final.pth")
    model = tiny_model(PAPER, ["dog", "fox", "owl"], 1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    AtomicDetectionCheckpointer(model, reinit_mismatched=True).load(path)
    visual = trained.fpn.fpn_lateral5.weight.shape[1] - 3
    # The image channels of fpn_lateral5 do not depend on the vocabulary: trained weights kept.
    assert torch.equal(model.fpn.fpn_lateral5.weight[:, :visual], trained.fpn.fpn_lateral5.weight[:, :visual])
    assert torch.equal(column(model, "dog"), column(trained, "dog"))
    for name in ("fox", "owl"):
        j = model.class_names.index(name)
        assert torch.equal(column(model, name), fresh["fpn.fpn_lateral5.weight"][:, visual + j])
        assert torch.equal(model.roi_heads.box_predictor.cls_score.weight[j], fresh["roi_heads.box_predictor.cls_score.weight"][j])
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight[0], trained.roi_heads.box_predictor.cls_score.weight[1])
    assert torch.equal(model.roi_heads.box_head.fc1.weight, trained.roi_heads.box_head.fc1.weight)


def test_predictor_names_come_from_weights_when_nothing_else_names_them(tmp_path):
    from denseclip.predictor import predictor_vocabulary

    trained = tiny_model(LANGUAGE, ["cat", "dog"])
    path = save(trained, tmp_path / "model_final.pth")
    opts = TINY + ["DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.WEIGHTS", path, "MODEL.DEVICE", "cpu"]
    cfg = build_config(f"configs/{LANGUAGE}", opts)
    assert list(cfg.MODEL.DENSECLIP.CLASS_NAMES) == []  # building a config opens no checkpoint
    assert predictor_vocabulary(cfg, checkpoint=read_checkpoint(path)) == ["cat", "dog"]
    with pytest.raises(ValueError, match="Cannot determine the class names"):
        predictor_vocabulary(build_config(f"configs/{LANGUAGE}", opts[:-4]))


def test_predictor_reads_the_weights_once_and_writes_no_vocabulary_into_its_config(tmp_path, monkeypatch):
    from denseclip.predictor import DenseCLIPPredictor

    path = save(tiny_model(LANGUAGE, ["cat", "dog"]), tmp_path / "model_final.pth")
    opts = ["MODEL.CLIP.PRETRAINED", "", "DATASETS.TRAIN", (), "DATASETS.TEST", (), "MODEL.WEIGHTS", path, "MODEL.DEVICE", "cpu"]
    cfg = build_config(f"configs/{LANGUAGE}", TINY + opts)
    reads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(f) or load(f, *a, **k))
    predictor = DenseCLIPPredictor(cfg, vocabulary=["sofa", "cat"])
    assert reads == [path]  # the vocabulary (cat, dog) and the weights come from one read
    assert predictor.class_names == ["sofa", "cat"]
    assert list(predictor.cfg.MODEL.DENSECLIP.CLASS_NAMES) == [] and list(cfg.MODEL.DENSECLIP.CLASS_NAMES) == []


def test_run_config_yaml_is_reusable(tmp_path):
    """What default_setup dumps (OUTPUT_DIR/config.yaml) registers the datasets, whose classes are the
    model's: the vocabulary is never written into a config (checkpoints record it)."""
    from denseclip.data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(tmp_path / "shapes"), num_train=2, num_val=1, image_size=64)
    spec = f"vocab_yaml_train={paths['train_json']}:{paths['train_image_root']}"
    cfg = build_config(f"configs/{LANGUAGE}", TINY + ["DATASETS.TRAIN", ("vocab_yaml_train",), "DATASETS.TEST", (), "MODEL.DEVICE", "cpu"])
    register_datasets_from_config(cfg, [spec])
    check_run_vocabulary(cfg)  # what train_net's setup does
    assert list(cfg.MODEL.DENSECLIP.CLASS_NAMES) == []
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    again = build_config(str(dumped))
    assert list(again.DATASETS.REGISTER) == [spec]
    assert register_datasets_from_config(again)[0] == "vocab_yaml_train"
    assert vocabulary_from_config(again) == vocabulary_from_config(cfg) and len(vocabulary_from_config(again)) == 8


def test_detectron2_registration_and_builtin_names(tmp_path):
    """register_coco_instances sets thing_classes only when the json is loaded; the names are
    resolved the way Detectron2's loaders do (loading it)."""
    from detectron2.data.datasets import register_coco_instances

    from denseclip.data import SYNTHETIC_CLASSES, generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(tmp_path / "shapes"), num_train=2, num_val=1, image_size=64)
    register_coco_instances("vocab_tutorial_train", {}, paths["train_json"], paths["train_image_root"])
    cfg = build_config(f"configs/{LANGUAGE}", TINY + ["DATASETS.TRAIN", ("vocab_tutorial_train",), "DATASETS.TEST", ()])
    assert vocabulary_from_config(cfg) == list(SYNTHETIC_CLASSES)
    cfg = build_config(f"configs/{LANGUAGE}", TINY + ["DATASETS.TRAIN", ("coco_2017_train",)])
    names = vocabulary_from_config(cfg)
    assert len(names) == 80 and names[0] == "person"


def test_open_clip_random_init_warning_is_replaced_by_what_is_loaded(caplog):
    from denseclip.clip_loading import create_clip_model

    with caplog.at_level(logging.INFO):
        create_clip_model("RN-tiny", model_config_file="RN-tiny.json")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("No pretrained weights loaded" in m for m in messages)
    assert sum("random initialisation" in m for m in messages) == 1


def test_stale_class_names_of_another_size_are_an_error(tmp_path):
    """A run's config.yaml reused on other training data keeps the old CLASS_NAMES: caught by size."""
    from denseclip.data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(tmp_path / "shapes"), num_train=2, num_val=1, image_size=64)
    spec = f"vocab_stale_train={paths['train_json']}:{paths['train_image_root']}"
    opts = TINY + ["DATASETS.TRAIN", ("vocab_stale_train",), "MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog"]]
    cfg = build_config(f"configs/{LANGUAGE}", opts)
    register_datasets_from_config(cfg, [spec])
    with pytest.raises(ValueError, match=r"CLASS_NAMES has 2 names but DATASETS.TRAIN 'vocab_stale_train' has 8"):
        check_run_vocabulary(cfg)
    renamed = [f"shape {i}" for i in range(8)]  # other prompts for the same 8 classes are fine
    cfg = build_config(f"configs/{LANGUAGE}", opts[:-1] + [renamed] + ["DATASETS.TEST", ()])
    check_run_vocabulary(cfg)
    assert vocabulary_from_config(cfg) == renamed


def test_vocabulary_swap_after_loading_starts_from_the_loaded_weights(tmp_path):
    trained = tiny_model(LANGUAGE, ["cat", "dog"])
    path = save(trained, tmp_path / "model_final.pth")
    model = tiny_model(LANGUAGE, ["cat", "dog"], 1)
    model.set_vocabulary(["sofa"])  # keeps the weights of its own (random) build as the base
    model.set_vocabulary(["cat", "dog"])
    AtomicDetectionCheckpointer(model).load(path)
    model.set_vocabulary(["dog", "sofa"])
    assert torch.equal(column(model, "dog"), column(trained, "dog"))
    torch.testing.assert_close(column(model, "sofa"), (column(trained, "cat") + column(trained, "dog")) / 2)
