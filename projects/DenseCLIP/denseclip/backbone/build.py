"""Builders registering CLIP image encoders (alone and with an FPN) with Detectron2."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from fvcore.nn import weight_init
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from ..clip_loading import create_clip_model, register_model_config
from .clip_resnet import CLIPResNet
from .clip_vit import CLIPViT
from .norm import convert_norm


def create_clip_from_config(cfg: CfgNode) -> nn.Module:
    """The full open_clip model (image and text towers) that MODEL.CLIP describes, weights loaded."""
    c = cfg.MODEL.CLIP
    return create_clip_model(
        c.MODEL_NAME,
        pretrained=c.PRETRAINED,
        quick_gelu=c.QUICK_GELU,
        model_config_file=c.MODEL_CONFIG_FILE,
        pretrained_sha256=c.PRETRAINED_SHA256,
        report_random=not cfg.MODEL.WEIGHTS,  # MODEL.WEIGHTS replace the random weights right after
    )


def text_clip_spec(cfg: CfgNode) -> Tuple[str, str]:
    """(open_clip model name, weights) of the CLIP model whose text tower DenseCLIP uses:
    MODEL.DENSECLIP.TEXT_ENCODER_MODEL/_PRETRAINED when set, else MODEL.CLIP's."""
    d = cfg.MODEL.DENSECLIP
    if d.TEXT_ENCODER_MODEL:
        return d.TEXT_ENCODER_MODEL, d.TEXT_ENCODER_PRETRAINED
    return cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED


def text_embed_dim(cfg: CfgNode) -> int:
    """The text tower's joint embedding dimension, read from its open_clip architecture (nothing built)."""
    if cfg.MODEL.CLIP.MODEL_CONFIG_FILE:
        register_model_config(cfg.MODEL.CLIP.MODEL_CONFIG_FILE)
    name, _ = text_clip_spec(cfg)
    config = open_clip.get_model_config(name)
    if config is None:
        key = "MODEL.DENSECLIP.TEXT_ENCODER_MODEL" if cfg.MODEL.DENSECLIP.TEXT_ENCODER_MODEL else "MODEL.CLIP.MODEL_NAME"
        raise ValueError(f"{key} '{name}' is not an open_clip architecture; expected one of e.g. RN50, RN101, ViT-B-16")
    return int(config["embed_dim"])


def create_text_clip_from_config(cfg: CfgNode) -> nn.Module:
    """The open_clip model whose text tower DenseCLIP uses, when it is not the image encoder's
    (MODEL.DENSECLIP.TEXT_ENCODER_MODEL set, or a non-CLIP image encoder), weights loaded."""
    if not cfg.MODEL.DENSECLIP.TEXT_ENCODER_MODEL:
        return create_clip_from_config(cfg)
    if cfg.MODEL.CLIP.MODEL_CONFIG_FILE:  # a custom architecture may be named here as well
        register_model_config(cfg.MODEL.CLIP.MODEL_CONFIG_FILE)
    name, pretrained = text_clip_spec(cfg)
    return create_clip_model(name, pretrained=pretrained, quick_gelu=cfg.MODEL.CLIP.QUICK_GELU, report_random=not cfg.MODEL.WEIGHTS)


def wrap_clip_visual(cfg: CfgNode, visual: nn.Module, with_attention_pool: bool) -> Backbone:
    """Wrap open_clip's image tower as a bottom-up backbone."""
    c = cfg.MODEL.CLIP
    if isinstance(visual, ModifiedResNet):
        if c.DROP_PATH_RATE > 0 or c.VIT_CLASS_EMBED_TWICE:
            raise ValueError("MODEL.CLIP.DROP_PATH_RATE and MODEL.CLIP.VIT_CLASS_EMBED_TWICE apply to CLIP ViTs only")
        backbone = CLIPResNet(
            visual,
            out_features=c.OUT_FEATURES,
            with_attention_pool=with_attention_pool,
            freeze_at=c.FREEZE_AT,
            pos_embed_mode=c.POS_EMBED_MODE,
            pos_embed_grid=c.POS_EMBED_GRID,
        )
    elif isinstance(visual, VisionTransformer):
        if c.FREEZE_AT > 0:
            raise ValueError("MODEL.CLIP.FREEZE_AT > 0 is only supported for CLIP ResNets")
        backbone = CLIPViT(
            visual,
            out_features=c.OUT_FEATURES,
            scales=c.VIT_PYRAMID_SCALES,
            with_attention_pool=with_attention_pool,
            pyramid=c.VIT_PYRAMID,
            out_indices=c.VIT_OUT_INDICES,
            pos_embed_mode=c.POS_EMBED_MODE,
            pos_embed_grid=c.POS_EMBED_GRID,
            drop_path_rate=c.DROP_PATH_RATE,
            class_embed_twice=c.VIT_CLASS_EMBED_TWICE,
        )
    else:
        raise ValueError(
            f"MODEL.CLIP.MODEL_NAME '{c.MODEL_NAME}' has a {type(visual).__name__} image tower; "
            "supported: ModifiedResNet (RN50, RN101, RN50x4) and VisionTransformer (ViT-B-16)"
        )
    # Frozen stages are FrozenBN already; ViTs have LayerNorms only (NORM is still validated).
    return convert_norm(backbone, c.NORM, cfg.MODEL.DEVICE)


def build_clip_bottom_up(cfg: CfgNode, with_attention_pool: bool) -> Tuple[Backbone, nn.Module]:
    """The CLIP image encoder as a Detectron2 backbone, plus the open_clip model it came from."""
    clip_model = create_clip_from_config(cfg)
    return wrap_clip_visual(cfg, clip_model.visual, with_attention_pool), clip_model


def _check_input(input_shape: ShapeSpec) -> None:
    if input_shape.channels not in (None, 3):
        raise ValueError(f"CLIP backbones take 3-channel RGB input, got {input_shape.channels} channels")


@BACKBONE_REGISTRY.register()
def build_clip_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """CLIP image encoder alone (res2..res5 and, with MODEL.CLIP.WITH_ATTENTION_POOL, embeddings)."""
    _check_input(input_shape)
    return build_clip_bottom_up(cfg, cfg.MODEL.CLIP.WITH_ATTENTION_POOL)[0]


def fpn_on(cfg: CfgNode, bottom_up: Backbone, top_block: Optional[nn.Module]) -> FPN:
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


class LastLevelP6P7WithoutReLU(LastLevelP6P7):
    """P6 from res5 and P7 = conv(P6), with no ReLU in between: mmdetection's FPN with
    ``add_extra_convs='on_input'`` and ``relu_before_extra_convs=False``, as in the reference.
    Same parameters as Detectron2's ``LastLevelP6P7`` (``p6``, ``p7``)."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(p6)]


def retinanet_top_block(cfg: CfgNode, res5_channels: int) -> LastLevelP6P7:
    """P6/P7 computed from res5 (the reference's add_extra_convs='on_input'); MODEL.FPN.P7_RELU says
    whether P7 reads relu(P6) (Detectron2) or P6 (the reference)."""
    block = LastLevelP6P7 if cfg.MODEL.FPN.P7_RELU else LastLevelP6P7WithoutReLU
    return block(res5_channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature="res5")


class SemanticFPN(FPN):
    """Detectron2's FPN (same modules and names) without extra levels, whose top-down pathway resizes
    each level to the size of the next one (nearest), as mmseg's FPN does: the same as Detectron2's 2x
    upsampling for inputs divisible by 32, and defined for the reference's unpadded test windows too."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        names = self.in_features[::-1]  # low to high resolution, the order of lateral_convs here
        prev = self.lateral_convs[0](features[names[0]])
        results = [self.output_convs[0](prev)]
        for name, lateral_conv, output_conv in zip(names[1:], self.lateral_convs[1:], self.output_convs[1:]):
            lateral = lateral_conv(features[name])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, output_conv(prev))
        return dict(zip(self._out_features, results))


def semantic_fpn_on(cfg: CfgNode, bottom_up: Backbone) -> FPN:
    """The reference's segmentation neck (mmseg FPN, num_outs 4): P2-P5, no extra level, its convs
    Kaiming-initialised as mmcv's ConvModule does (Detectron2's FPN uses Xavier's)."""
    if cfg.MODEL.FPN.FUSE_TYPE != "sum":
        raise ValueError(f"MODEL.FPN.FUSE_TYPE: the Semantic FPN neck sums its levels, got '{cfg.MODEL.FPN.FUSE_TYPE}'")
    fpn = SemanticFPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
                      norm=cfg.MODEL.FPN.NORM, top_block=None)
    for conv in [*fpn.lateral_convs, *fpn.output_convs]:
        weight_init.c2_msra_fill(conv)
    return fpn


@BACKBONE_REGISTRY.register()
def build_clip_semantic_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """CLIP image encoder + FPN (P2-P5), for the CLIP-baseline Semantic FPN."""
    return semantic_fpn_on(cfg, build_clip_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_clip_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """CLIP image encoder + FPN (P2-P6), for Mask R-CNN."""
    bottom_up = build_clip_backbone(cfg, input_shape)
    return fpn_on(cfg, bottom_up, LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_clip_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """CLIP image encoder + FPN (P3-P7, P6 from res5), for RetinaNet."""
    bottom_up = build_clip_backbone(cfg, input_shape)
    return fpn_on(cfg, bottom_up, retinanet_top_block(cfg, bottom_up.output_shape()["res5"].channels))
