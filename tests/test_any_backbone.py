"""DenseCLIP for any backbone (issue 20): ImageNet ResNets (Detectron2's) and Swin (timm) with a new
CLIP-style attention pool; the IN1k configs and their baselines through the plain Detectron2 route;
gradients; the text tower chosen independently; ImageNet weights from files the libraries write."""
import pickle
import re

import open_clip
import pytest
import timm
import torch
import torchvision
from conftest import CONFIG_DIR, synthetic_batch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.utils.events import EventStorage
from tiny_semseg import label_batch

from denseclip import add_denseclip_config
from denseclip.backbone import CLIP_DENSE, CLIP_GLOBAL, attention_pool_tokens, build_language_guided_backbone, clip_attention_pool
from denseclip.backbone.build import text_embed_dim
from denseclip.clip_loading import register_model_config
from denseclip.engine import build_config, build_optimizer, model_parameter_groups

# Small stand-ins with the configs' architectures: a thin ResNet (the depth of the config, 1/8 of
# the width), RN-tiny's text tower (256-d) instead of ViT-B-16's.
TINY = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
        "MODEL.CLIP.PRETRAINED", "",
        "MODEL.RESNETS.WIDTH_PER_GROUP", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 16, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.RETINANET.NUM_CLASSES", 3, "MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog", "car"],
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3, "SOLVER.BASE_LR", 1e-3]

BACKBONES = ("R50", "R101", "Swin-T", "Swin-S")
CONFIGS = [f"COCO/{arch}_{dc}{bb}-IN1k_FPN_1x.yaml" for arch in ("mask_rcnn", "retinanet")
           for bb in BACKBONES for dc in ("denseclip_", "")]
CONFIGS += [f"ADE20K/semantic_fpn_{dc}{bb}-IN1k_512x512_80k.yaml" for bb in BACKBONES for dc in ("denseclip_", "")]
META_ARCHITECTURES = {  # (DenseCLIP, task) -> meta-architecture
    (True, "mask_rcnn"): "DenseCLIPRCNN", (False, "mask_rcnn"): "GeneralizedRCNN",
    (True, "retinanet"): "DenseCLIPRetinaNet", (False, "retinanet"): "TopKRetinaNet",
    (True, "semantic_fpn"): "DenseCLIPSemanticSegmentor", (False, "semantic_fpn"): "CLIPSemanticSegmentor",
}


@pytest.fixture
def thin_swin(monkeypatch):
    """timm's Swin models at a third of their width (embed 32, heads 1-2-4-8): same depths and code,
    as the thin ResNets of TINY."""
    create = timm.create_model

    def thin(name, **kwargs):
        if name.startswith("swin_"):
            kwargs.update(embed_dim=32, num_heads=(1, 2, 4, 8))
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", thin)


def get_cfg_from_file(config_file: str):
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / config_file))
    return cfg


def d2_cfg(config_file: str, opts=()):
    """get_cfg -> add_denseclip_config -> merge_from_file, with TINY: the plain Detectron2 route."""
    cfg = get_cfg_from_file(config_file)
    cfg.merge_from_list(TINY + list(opts))
    return cfg


def train(model, cfg, steps: int, size=(64, 64), segmentation: bool = False):
    optimizer = build_optimizer(cfg, model)  # the recipe's groups (and gradient clipping)
    model.train()
    with EventStorage(0) as storage:
        for it in range(steps):
            storage.iter = it
            make_batch = label_batch if segmentation else synthetic_batch
            losses = model(make_batch(2, size, num_classes=3, seed=it))
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    return losses


# The keys of the image encoder and of everything DenseCLIP does not change.
SHARED_KEYS = ("MODEL.BACKBONE.FREEZE_AT", "MODEL.ANY_BACKBONE.BOTTOM_UP", "MODEL.ANY_BACKBONE.WEIGHTS", "MODEL.ANY_BACKBONE.NORM",
               "MODEL.RESNETS", "MODEL.TIMM", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.FPN", "MODEL.ANCHOR_GENERATOR",
               "MODEL.RPN", "MODEL.ROI_BOX_HEAD", "MODEL.ROI_MASK_HEAD", "MODEL.RETINANET", "MODEL.SEM_SEG_HEAD", "INPUT",
               "SOLVER", "DATASETS", "TEST")


@pytest.mark.parametrize("config_file", [c for c in CONFIGS if "denseclip_" in c] + [
    "Synthetic/mask_rcnn_denseclip_R50-IN1k-thin_FPN_shapes.yaml"])
def test_denseclip_config_differs_from_its_baseline_only_by_denseclip(config_file):
    denseclip, baseline = get_cfg_from_file(config_file), get_cfg_from_file(config_file.replace("denseclip_", ""))
    for key in SHARED_KEYS:
        a, b = denseclip.clone(), baseline.clone()
        for part in key.split("."):
            a, b = a[part], b[part]
        if isinstance(a, dict) and "NUM_CLASSES" in a:  # DenseCLIP: 0 = the vocabulary's size
            a.pop("NUM_CLASSES"), b.pop("NUM_CLASSES")
        assert a == b, key
    assert denseclip.MODEL.BACKBONE.NAME == "build_language_guided_backbone"  # the image encoder
    for path in (config_file, config_file.replace("denseclip_", "")):  # train_net's route accepts both
        build_config(str(CONFIG_DIR / path), ["MODEL.DEVICE", "cpu"])


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_builds_and_trains(config_file, thin_swin):
    cfg = d2_cfg(config_file)
    model = build_model(cfg)
    denseclip = "denseclip_" in config_file
    task = next(t for t in ("mask_rcnn", "retinanet", "semantic_fpn") if t in config_file)
    assert type(model).__name__ == META_ARCHITECTURES[denseclip, task]
    bottom_up = model.backbone.bottom_up
    assert type(bottom_up).__name__ == ("TimmBackbone" if "Swin" in config_file else "ResNet")
    if denseclip:
        assert set(model.backbone.output_shape()) >= {"res3", "res4", "res5", CLIP_DENSE, CLIP_GLOBAL}
        pool = model.backbone.attnpool
        channels = bottom_up.output_shape()["res5"].channels
        assert pool.num_heads == channels // 64 and pool.c_proj.out_features == 256  # CLIP's heads; RN-tiny's text width
    watched = [next(bottom_up.parameters())] + ([model.backbone.attnpool.c_proj.weight] if denseclip else [])
    before = [p.detach().clone() for p in watched]
    # The R101 / Swin-S configs differ from the R50 / Swin-T ones by depth and timm model name only.
    losses = train(model, cfg, steps=1 if "R101" in config_file or "Swin-S" in config_file else 2,
                   segmentation=task == "semantic_fpn")
    assert ("loss_pixel_text" in losses) == denseclip
    # Every trainable parameter takes part (DistributedDataParallel without find_unused_parameters).
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(not torch.equal(b, p) for b, p in zip(before, watched))


# The language-guided heads on an ImageNet encoder whose text tower is not MODEL.CLIP's: the configs'
# ViT-B-16 (512-d) named in MODEL.CLIP, RN-tiny's (256-d) in MODEL.DENSECLIP.TEXT_ENCODER_MODEL.
OTHER_TEXT_TOWER = ["MODEL.CLIP.MODEL_NAME", "ViT-B-16", "MODEL.DENSECLIP.TEXT_ENCODER_MODEL", "RN-tiny",
                    "MODEL.DENSECLIP.HEAD", "language"]
LANGUAGE_HEADS = {  # config -> (extra options, the head's text-width layer)
    "COCO/mask_rcnn_denseclip_R50-IN1k_FPN_1x.yaml": (
        ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True],
        lambda m: m.roi_heads.box_predictor.cls_score.out_features),
    "COCO/retinanet_denseclip_R50-IN1k_FPN_1x.yaml": ([], lambda m: m.head.text_proj.in_features),
    "ADE20K/semantic_fpn_denseclip_R50-IN1k_512x512_80k.yaml": (
        ["MODEL.SEM_SEG_HEAD.NAME", "LanguageGuidedSemanticFPNHead"], lambda m: m.sem_seg_head.predictor.out_channels),
}


@pytest.mark.parametrize("config_file", LANGUAGE_HEADS)
def test_language_heads_take_the_width_of_the_text_tower_in_use(config_file):
    """One function gives the text width (text_embed_dim: MODEL.DENSECLIP.TEXT_ENCODER_MODEL when set)
    to the attention pool and to the heads alike, so the language-guided heads fit the text."""
    opts, head_width = LANGUAGE_HEADS[config_file]
    cfg = d2_cfg(config_file, OTHER_TEXT_TOWER + opts)
    assert text_embed_dim(cfg) == 256 and open_clip.get_model_config("ViT-B-16")["embed_dim"] == 512
    model = build_model(cfg)
    assert model.language_guided and model.backbone.attnpool.c_proj.out_features == 256 and head_width(model) == 256
    train(model, cfg, steps=1, segmentation="semantic_fpn" in config_file)


def test_gradients_reach_pool_context_and_decoder_not_the_text_tower():
    cfg = d2_cfg("COCO/mask_rcnn_denseclip_R50-IN1k_FPN_1x.yaml")
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        sum(model(synthetic_batch(2, (64, 96), num_classes=3)).values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("backbone.attnpool.q_proj.weight", "backbone.attnpool.c_proj.weight", "backbone.attnpool.positional_embedding",
                 "backbone.bottom_up.res5.2.conv3.weight", "text_side.prompt_encoder.context", "text_side.gamma",
                 "text_side.context_decoder.out_proj.1.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    tower = [n for n in grads if n.startswith("text_side.prompt_encoder.clip_text.")]
    assert tower and all(grads[n] is None and not model.get_parameter(n).requires_grad for n in tower)
    groups = model_parameter_groups(model)
    assert any(n == "backbone.attnpool.c_proj.weight" for n, _ in groups["image_encoder"])


def test_pool_is_clip_attention_pool_and_swin_takes_any_multiple_of_32(thin_swin):
    # The dense path reproduces open_clip's AttentionPool2d (token 0) on its own grid.
    pool = clip_attention_pool(128, 64, grid=3).eval()
    assert pool.num_heads == 2
    x = torch.randn(2, 128, 3, 3)
    global_embed, dense = attention_pool_tokens(pool, x)
    torch.testing.assert_close(global_embed, pool(x))
    assert dense.shape == (2, 64, 3, 3)
    with pytest.raises(ValueError, match="POOL_HEADS"):
        clip_attention_pool(128, 64, heads=3)

    cfg = d2_cfg("COCO/mask_rcnn_denseclip_Swin-T-IN1k_FPN_1x.yaml")
    backbone = build_language_guided_backbone(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 96, 160))
    assert {k: tuple(v.shape[1:]) for k, v in out.items() if k != CLIP_GLOBAL} == {
        "res2": (32, 24, 40), "res3": (64, 12, 20), "res4": (128, 6, 10), "res5": (256, 3, 5), CLIP_DENSE: (256, 3, 5)}
    assert out[CLIP_GLOBAL].shape == (1, 256) and backbone.attnpool.num_heads == 4
    with pytest.raises(ValueError, match="divisible by 32"):
        backbone(torch.randn(1, 3, 96, 150))


def test_text_tower_is_chosen_independently(tmp_path):
    torch.manual_seed(0)
    register_model_config("RN-tiny.json")
    text_model = open_clip.create_model("RN-tiny", pretrained=None, force_quick_gelu=True)
    path = tmp_path / "text.pt"
    torch.save(text_model.state_dict(), path)
    opts = ["MODEL.DENSECLIP.TEXT_ENCODER_MODEL", "RN-tiny", "MODEL.DENSECLIP.TEXT_ENCODER_PRETRAINED", str(path)]
    model = build_model(d2_cfg("COCO/retinanet_denseclip_R50-IN1k_FPN_1x.yaml", opts))
    assert torch.equal(model.text_side.prompt_encoder.clip_text.token_embedding.weight, text_model.token_embedding.weight)
    assert model.backbone.output_shape()[CLIP_DENSE].channels == 256
    # The IN1k configs' own text tower: ViT-B-16's (512-d), the width of their attention pools.
    assert text_embed_dim(get_cfg_from_file("COCO/retinanet_denseclip_Swin-T-IN1k_FPN_1x.yaml")) == 512
    with pytest.raises(ValueError, match=r"\(128-d\) and the text tower's \(256-d\)"):
        build_model(d2_cfg("COCO/retinanet_denseclip_R50-IN1k_FPN_1x.yaml", ["MODEL.ANY_BACKBONE.POOL_DIM", 128]))
    with pytest.raises(ValueError, match="TEXT_ENCODER_MODEL 'RN-nothing' is not an open_clip architecture"):
        build_model(d2_cfg("COCO/retinanet_denseclip_R50-IN1k_FPN_1x.yaml", ["MODEL.DENSECLIP.TEXT_ENCODER_MODEL", "RN-nothing"]))


# ------------------------------------------------------------------------------------ weights
def resnet_cfg(weights: str = "", depth: int = 50, width: int = 8):
    return d2_cfg("COCO/mask_rcnn_R50-IN1k_FPN_1x.yaml", [
        "MODEL.ANY_BACKBONE.WEIGHTS", weights, "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.WIDTH_PER_GROUP", width,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256, "MODEL.RESNETS.STEM_OUT_CHANNELS", 64])


def test_torchvision_resnet_file_gives_torchvision_features(tmp_path):
    """A torchvision ResNet-50 state dict (thin: width_per_group 8) in Detectron2's ResNet, with the
    configs' torchvision layout (stride in the 3x3 conv): the same features as torchvision."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], width_per_group=8).eval()
    for module in reference.modules():  # non-trivial statistics, so that a misplaced BN would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(resnet_cfg(str(path))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
    torch.testing.assert_close(ours["res5"], expected)


def test_detectron2_pkl_loads_like_the_model_zoo_files(tmp_path):
    torch.manual_seed(0)
    source = build_resnet_backbone(resnet_cfg(), ShapeSpec(channels=3))
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:  # Detectron2's ImageNet .pkl layout: numpy arrays, author, heuristics flag
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "torchvision",
                     "matching_heuristics": True}, f)
    model = build_model(resnet_cfg(str(path)))
    loaded = model.backbone.bottom_up.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_timm_swin_file_loads(tmp_path, thin_swin):
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224").eval()
    path = tmp_path / "swin_tiny.pth"
    torch.save(reference.state_dict(), path)
    cfg = d2_cfg("COCO/retinanet_Swin-T-IN1k_FPN_1x.yaml", ["MODEL.ANY_BACKBONE.WEIGHTS", str(path), "MODEL.TIMM.OUT_NORM", False])
    bottom_up = build_backbone(cfg).bottom_up.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        torch.testing.assert_close(bottom_up(x)["res5"], expected[-1])

    # Microsoft's release layout ({"model": ...}, patch merging at the end of a stage, "head."):
    # timm's own conversion of the architecture applies.
    old_layout = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
                  .replace("head.fc.", "head."): v for k, v in reference.state_dict().items()}
    assert "layers.0.downsample.reduction.weight" in old_layout
    torch.save({"model": old_layout}, path)
    bottom_up = build_backbone(cfg).bottom_up.eval()
    with torch.no_grad():
        torch.testing.assert_close(bottom_up(x)["res5"], expected[-1])


def test_wrong_or_missing_weight_files_are_named(tmp_path, thin_swin):
    with pytest.raises(FileNotFoundError, match="MODEL.ANY_BACKBONE.WEIGHTS: no such file: .*nothing.pth"):
        build_model(resnet_cfg(str(tmp_path / "nothing.pth")))
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"(?s)does not fit the bottom-up \(ResNet\).*shape mismatches.*"
                                         r"res2.0.conv1.weight: file \(64, 64, 3, 3\) vs model \(8, 64, 1, 1\).*missing keys"):
        build_model(resnet_cfg(str(path)))
    with pytest.raises(ValueError, match=r"(?s)does not fit the bottom-up \(TimmBackbone\).*missing keys.*model.patch_embed"):
        build_model(d2_cfg("COCO/mask_rcnn_Swin-T-IN1k_FPN_1x.yaml", ["MODEL.ANY_BACKBONE.WEIGHTS", str(path)]))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="MODEL.ANY_BACKBONE.WEIGHTS: could not read"):
        build_model(resnet_cfg(str(garbage)))
