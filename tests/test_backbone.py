"""CLIP image encoders as Detectron2 backbones: equivalence with open_clip, weight loading, shapes,
gradients, norms, and the CLIP-baseline detectors built from configs/COCO."""
import open_clip
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from denseclip import add_denseclip_config
from denseclip.backbone import CLIP_DENSE, CLIP_GLOBAL, build_clip_bottom_up, resize_spatial_pos_embed


def clip_cfg(model_name: str, pretrained: str = "", **clip_keys):
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.MODEL.CLIP.MODEL_NAME = model_name
    cfg.MODEL.CLIP.PRETRAINED = pretrained
    for key, value in clip_keys.items():
        setattr(cfg.MODEL.CLIP, key, value)
    return cfg


@pytest.fixture(scope="module")
def rn50_reference():
    torch.manual_seed(1)
    return open_clip.create_model("RN50", pretrained=None).eval()


@pytest.mark.parametrize("model_name", ["RN50", "ViT-B-16"])
def test_global_embedding_equals_open_clip_and_state_dict_round_trip(model_name, tmp_path):
    torch.manual_seed(1)
    reference = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path / f"{model_name}.pt"
    torch.save(reference.state_dict(), path)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.encode_image(image)

    # Same open_clip model wrapped by the backbone: identical computation.
    cfg = clip_cfg(model_name, WITH_ATTENTION_POOL=True)
    backbone, _ = build_clip_bottom_up(cfg, with_attention_pool=True)
    backbone.visual.load_state_dict(reference.visual.state_dict())
    with torch.no_grad():
        out = backbone.eval()(image)
    torch.testing.assert_close(out[CLIP_GLOBAL], expected, atol=1e-4, rtol=1e-4)

    # Loading the saved file through MODEL.CLIP.PRETRAINED reproduces the reference.
    loaded, clip_model = build_clip_bottom_up(clip_cfg(model_name, pretrained=str(path)), with_attention_pool=True)
    with torch.no_grad():
        out = loaded.eval()(image)
    torch.testing.assert_close(out[CLIP_GLOBAL], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(clip_model.token_embedding.weight, reference.token_embedding.weight)


def test_torchscript_archive_loads_like_openai_files(tmp_path):
    from denseclip.clip_loading import create_clip_model, register_model_config

    register_model_config("RN-tiny.json")
    model = open_clip.create_model("RN-tiny", pretrained=None).eval()
    path = tmp_path / "tiny_jit.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = create_clip_model("RN-tiny", pretrained=str(path)).eval()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "RN50.pt"
    with pytest.raises(FileNotFoundError, match="nope/RN50.pt"):
        build_clip_bottom_up(clip_cfg("RN50", pretrained=str(missing)), with_attention_pool=False)


def test_architecture_mismatch_names_keys(rn50_reference, tmp_path):
    path = tmp_path / "rn50.pt"
    torch.save(rn50_reference.state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_clip_bottom_up(clip_cfg("RN101", pretrained=str(path)), with_attention_pool=False)
    message = str(err.value)
    assert str(path) in message
    assert "unexpected keys" in message or "missing keys" in message or "shape mismatches" in message
    assert "visual." in message


def test_checksum_mismatch_is_reported(rn50_reference, tmp_path):
    path = tmp_path / "rn50.pt"
    torch.save(rn50_reference.state_dict(), path)
    with pytest.raises(ValueError, match="sha256"):
        build_clip_bottom_up(clip_cfg("RN50", pretrained=str(path), PRETRAINED_SHA256="0" * 64), False)


def test_unknown_pretrained_tag_and_model_name_errors():
    with pytest.raises(ValueError, match="not-a-tag"):
        build_clip_bottom_up(clip_cfg("RN50", pretrained="not-a-tag"), False)
    with pytest.raises(ValueError, match="MODEL.CLIP.MODEL_NAME"):
        build_clip_bottom_up(clip_cfg("RN9000"), False)


# Square CLIP size, a non-square one and a detection-like one (all divisible by 32).
SIZES = [(224, 224), (320, 480), (512, 832)]
EXPECTED_CHANNELS = {
    "RN50": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048, "embed": 1024, "dense_stride": 32},
    "RN101": {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048, "embed": 512, "dense_stride": 32},
    "ViT-B-16": {"res2": 192, "res3": 384, "res4": 768, "res5": 768, "embed": 512, "dense_stride": 16},
}


@pytest.mark.parametrize("model_name", list(EXPECTED_CHANNELS))
def test_shapes_and_strides(model_name):
    backbone, _ = build_clip_bottom_up(clip_cfg(model_name), with_attention_pool=True)
    backbone.eval()
    expected = EXPECTED_CHANNELS[model_name]
    shapes = backbone.output_shape()
    embeddings = {k: shapes.pop(k) for k in (CLIP_DENSE, CLIP_GLOBAL)}  # declared like the stages
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert embeddings[CLIP_DENSE].stride == expected["dense_stride"]
    assert embeddings[CLIP_DENSE].channels == embeddings[CLIP_GLOBAL].channels == expected["embed"]
    assert backbone.size_divisibility == 32
    for h, w in SIZES:
        with torch.no_grad():
            out = backbone(torch.randn(1, 3, h, w))
        for name, spec in shapes.items():
            assert out[name].shape == (1, expected[name], h // spec.stride, w // spec.stride), (name, h, w)
        s = expected["dense_stride"]
        assert out[CLIP_DENSE].shape == (1, expected["embed"], h // s, w // s)
        assert out[CLIP_GLOBAL].shape == (1, expected["embed"])


def test_input_not_divisible_by_32_is_rejected():
    backbone, _ = build_clip_bottom_up(clip_cfg("RN50"), with_attention_pool=False)
    with pytest.raises(ValueError, match="divisible by 32"):
        backbone(torch.randn(1, 3, 100, 128))


def test_positional_embedding_interpolation_is_identity_on_native_grid_and_resizes():
    pos = torch.randn(50, 8)
    assert resize_spatial_pos_embed(pos, (7, 7)) is pos
    resized = resize_spatial_pos_embed(pos, (10, 15))
    assert resized.shape == (151, 8)
    torch.testing.assert_close(resized[0], pos[0])


@pytest.mark.parametrize("model_name", ["RN50", "ViT-B-16"])
def test_gradients_reach_every_trainable_parameter(model_name):
    backbone, _ = build_clip_bottom_up(clip_cfg(model_name), with_attention_pool=True)
    backbone.train()
    out = backbone(torch.randn(2, 3, 64, 96))
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert sum(p.grad.abs().sum().item() for _, p in trainable) > 0


def test_norm_choices_and_freeze_at():
    from detectron2.layers import FrozenBatchNorm2d

    frozen, _ = build_clip_bottom_up(clip_cfg("RN50", NORM="FrozenBN"), False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())

    # SyncBN in a single process computes plain BatchNorm (no process group to sync with).
    single, _ = build_clip_bottom_up(clip_cfg("RN50", NORM="SyncBN"), False)
    assert any(type(m) is torch.nn.BatchNorm2d for m in single.modules())

    partly, _ = build_clip_bottom_up(clip_cfg("RN50", NORM="BN", FREEZE_AT=2), False)
    assert not partly.visual.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in partly.visual.layer1.parameters())
    assert all(p.requires_grad for p in partly.visual.layer2.parameters())

    with pytest.raises(ValueError, match="MODEL.CLIP.NORM"):
        build_clip_bottom_up(clip_cfg("RN50", NORM="GN"), False)


def test_build_backbone_through_registry():
    cfg = clip_cfg("RN50")
    cfg.MODEL.BACKBONE.NAME = "build_clip_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    fpn = build_backbone(cfg)
    assert sorted(fpn.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]


BASELINES = {
    # config: paper's parameter count (millions)
    "COCO/retinanet_clip_R50_FPN_1x.yaml": 38,
    "COCO/mask_rcnn_clip_R50_FPN_1x.yaml": 44,
    "COCO/retinanet_clip_R101_FPN_1x.yaml": 57,
    "COCO/mask_rcnn_clip_R101_FPN_1x.yaml": 63,
}


@pytest.mark.parametrize("config_file", list(BASELINES))
def test_baseline_parameter_counts_match_paper(config_file, make_cfg):
    model = build_model(make_cfg(config_file))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - BASELINES[config_file]) / BASELINES[config_file] < 0.05, params


@pytest.mark.parametrize("config_file", ["COCO/retinanet_clip_R50_FPN_1x.yaml", "COCO/mask_rcnn_clip_R50_FPN_1x.yaml"])
def test_baseline_train_step_and_inference(config_file, make_cfg, make_batch):
    cfg = make_cfg(config_file, ["MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    model = build_model(cfg)
    model.train()
    with EventStorage(0):  # Detectron2's losses log statistics into the current storage
        losses = model(make_batch(num_classes=3))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.bottom_up.visual.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    instances = outputs[0]["instances"]
    assert instances.image_size == (96, 128)
    assert instances.pred_boxes.tensor.shape[1] == 4
