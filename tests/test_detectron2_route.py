"""Detectron2's standard route (get_cfg -> add_denseclip_config -> merge_from_file -> build_model /
DefaultPredictor) for every config, the one source of the vocabulary, and the class count that
follows from it."""
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from denseclip import add_denseclip_config

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "projects" / "DenseCLIP" / "denseclip"
CONFIGS = sorted(str(p.relative_to(REPO_ROOT / "configs")) for p in (REPO_ROOT / "configs").rglob("*.yaml")
                 if not p.name.startswith("Base-"))
TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32]
PAPER = "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"
LANGUAGE_RETINANET = "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml"


def plain_cfg(config_file: str, opts=()):
    """Detectron2's route, nothing of this project's command lines: random weights, CPU, frozen."""
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / config_file))
    cfg.merge_from_list(["MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    cfg.freeze()
    return cfg


def head_num_classes(model) -> int:
    """The number of classes the built heads predict, read from their layers."""
    if hasattr(model, "sem_seg_head"):
        return model.sem_seg_head.num_classes
    if hasattr(model, "roi_heads"):
        predictor = model.roi_heads.box_predictor
        if getattr(model, "language_guided", False):
            return predictor.num_classes
        return predictor.cls_score.out_features - 1  # + background
    if getattr(model, "language_guided", False):
        return model.num_classes
    return model.head.cls_score.out_channels // model.anchor_generator.num_cell_anchors[0]


@pytest.mark.parametrize("config_file", CONFIGS)
def test_every_config_builds_through_detectron2s_route(config_file):
    # The prompting ablation's leaves differ from their paper config (built full size here) only in
    # MODEL.DENSECLIP.PROMPTING: built small, through the same route, to keep the suite's time.
    cfg = plain_cfg(config_file, TINY if "_prompting-" in config_file else ())
    model = build_model(cfg)
    kind = "stuff_classes" if hasattr(model, "sem_seg_head") else "thing_classes"  # segmentors / detectors
    names = list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get(kind))
    assert head_num_classes(model) == len(names)
    if hasattr(model, "text_side"):  # DenseCLIP: its vocabulary is the training dataset's classes
        assert model.class_names == names
        feature = model.text_side.score_map_feature  # res5; res4 for the segmentation ViT
        shape = model.backbone.output_shape()[feature]
        lateral = getattr(model.fpn, f"fpn_lateral{int(math.log2(shape.stride))}")
        assert lateral.in_channels == shape.channels + len(names)  # image channels + score maps
        assert model.text_side.fused_shapes(model.backbone.output_shape())[feature].channels == shape.channels + len(names)
        assert model.text_side.prompting == cfg.MODEL.DENSECLIP.PROMPTING


def test_class_names_of_the_config_size_the_heads_and_disagreeing_num_classes_is_an_error():
    names = ["cat", "dog", "remote control"]
    model = build_model(plain_cfg(PAPER, [*TINY, "MODEL.DENSECLIP.CLASS_NAMES", names]))
    assert model.class_names == names and head_num_classes(model) == 3
    assert model.roi_heads.mask_head.predictor.out_channels == 3
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 5 but the vocabulary has 3 class names"):
        build_model(plain_cfg(PAPER, [*TINY, "MODEL.DENSECLIP.CLASS_NAMES", names, "MODEL.ROI_HEADS.NUM_CLASSES", 5]))
    model = build_model(plain_cfg(LANGUAGE_RETINANET, [*TINY, "MODEL.DENSECLIP.CLASS_NAMES", names,
                                                       "MODEL.RETINANET.NUM_CLASSES", 3]))
    assert head_num_classes(model) == 3
    # MODEL.BACKBONE.NAME names the image encoder: one emitting CLIP's embeddings.
    with pytest.raises(ValueError, match=r"image encoder must emit CLIP embeddings \(clip_dense\): MODEL.BACKBONE.NAME"):
        build_model(plain_cfg(PAPER, [*TINY, "MODEL.BACKBONE.NAME", "build_clip_fpn_backbone"]))
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.NAME 'StandardROIHeads' does not declare its per-class tensors"):
        build_model(plain_cfg(PAPER, [*TINY, "MODEL.ROI_HEADS.NAME", "StandardROIHeads"]))
    # The first versions' DenseCLIP backbones (built, then taken apart) are named as gone.
    with pytest.raises(ValueError, match=r"'build_denseclip_backbone' is not a registered .* build_denseclip_\*_backbone are gone"):
        build_model(plain_cfg(PAPER, [*TINY, "MODEL.BACKBONE.NAME", "build_denseclip_backbone"]))


def test_the_vocabulary_is_an_argument_of_the_build_and_never_written_into_the_config():
    from denseclip.modeling import build_denseclip_model

    cfg = plain_cfg(PAPER, [*TINY, "DATASETS.TRAIN", ()])  # no class names anywhere in the config
    model = build_denseclip_model(cfg, vocabulary=["cat", "dog"])
    assert model.class_names == ["cat", "dog"] and head_num_classes(model) == 2
    assert list(cfg.MODEL.DENSECLIP.CLASS_NAMES) == [] and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 0
    # The argument wins over the config's names; a meta-architecture without a vocabulary takes none.
    named = plain_cfg(LANGUAGE_RETINANET, [*TINY, "MODEL.DENSECLIP.CLASS_NAMES", ["a", "b", "c"]])
    assert build_denseclip_model(named, ["sofa"]).class_names == ["sofa"]
    with pytest.raises(ValueError, match=r"'GeneralizedRCNN' takes no vocabulary"):
        build_denseclip_model(plain_cfg("COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml"), ["cat"])


def test_no_class_names_and_no_dataset_is_one_error_naming_both_ways():
    with pytest.raises(ValueError, match=r"set MODEL.DENSECLIP.CLASS_NAMES, or set DATASETS.TRAIN") as e:
        build_model(plain_cfg(PAPER, [*TINY, "DATASETS.TRAIN", ()]))
    assert "thing_classes" in str(e.value)
    with pytest.raises(ValueError, match=r"'denseclip_unregistered_train' has no thing_classes"):
        build_model(plain_cfg(PAPER, [*TINY, "DATASETS.TRAIN", ("denseclip_unregistered_train",)]))


def test_stuff_classes_are_the_vocabulary_of_segmentation_models():
    from denseclip.modeling import vocabulary_from_config

    MetadataCatalog.get("denseclip_route_stuff").set(stuff_classes=["sky", "road"], thing_classes=["car"])
    cfg = plain_cfg(PAPER, ["DATASETS.TRAIN", ("denseclip_route_stuff",)])
    assert vocabulary_from_config(cfg, "stuff") == ["sky", "road"]
    assert vocabulary_from_config(cfg) == ["car"]


def test_default_predictor_runs_a_photo_with_a_paper_config(tiny_coco_root):
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    photo = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]
    cfg = plain_cfg(PAPER, ["INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 384, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                            "MODEL.DENSECLIP.RETURN_SCORE_MAPS", True])
    image = read_image(str(photo), format="BGR")
    outputs = DefaultPredictor(cfg)(image)
    instances = outputs["instances"]
    assert instances.image_size == image.shape[:2] and len(instances) > 0
    assert instances.pred_masks.shape[1:] == image.shape[:2]
    assert int(instances.pred_classes.max()) < 80
    # The declared score maps: one probability map per COCO class, at the photo's size.
    assert outputs["score_maps"].shape == (80, *image.shape[:2])
    assert 0.0 <= float(outputs["score_maps"].min()) and float(outputs["score_maps"].max()) <= 1.0


def test_no_forward_hook_in_the_package():
    sources = list(PACKAGE.rglob("*.py"))
    assert sources
    hooked = [str(p.relative_to(PACKAGE)) for p in sources if "register_forward" in p.read_text()]
    assert not hooked, f"forward hooks in {hooked}"


def test_text_tokens_and_embeddings_are_cached_per_vocabulary(monkeypatch):
    from conftest import synthetic_batch
    from detectron2.utils.events import EventStorage

    model = build_model(plain_cfg(LANGUAGE_RETINANET, [*TINY, "MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog", "sofa"]]))
    text_side = model.text_side
    assert "text_side.text_embeddings_cache" in dict(model.named_buffers())
    assert not any("cache" in k for k in model.state_dict())  # not persistent: checkpoints are unchanged
    tokenized = []
    monkeypatch.setattr(text_side.prompt_encoder, "tokenize", lambda names: tokenized.append(names))
    model.train()
    with EventStorage(0):
        model(synthetic_batch(1, (64, 96), num_classes=3))  # a training step: no tokenization
    assert not tokenized and text_side.text_embeddings_cache.numel() == 0
    model.eval()
    images = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        model(images)
    cached = text_side.text_embeddings_cache
    assert cached.shape == (3, text_side.prompt_encoder.embed_dim)
    model.eval()  # eval() keeps it
    assert text_side.text_embeddings_cache is cached
    monkeypatch.undo()
    model.set_vocabulary(["cat", "remote control"])
    assert text_side.text_embeddings_cache.numel() == 0
    with torch.no_grad():
        model(images)
    expected = text_side.prompt_encoder(["cat", "remote control"])
    torch.testing.assert_close(text_side.text_embeddings_cache, expected)
