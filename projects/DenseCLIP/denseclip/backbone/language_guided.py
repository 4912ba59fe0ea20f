"""DenseCLIP for any backbone (paper section 4.3): a non-CLIP image encoder (Detectron2's ResNets,
timm's Swin) with a new, randomly initialised CLIP-style attention pool on its last stage that maps
its features into the text tower's embedding space.

The wrapped backbone emits what the CLIP backbones emit (res2..res5, ``clip_dense``, ``clip_global``),
so DenseCLIP's text side, context decoder, score maps and pixel-text loss run unchanged. The plain
baselines put the same bottom-up (same weights) under Detectron2's FPN.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from open_clip.modified_resnet import AttentionPool2d

from .build import fpn_on, retinanet_top_block, semantic_fpn_on, text_embed_dim
from .clip_resnet import CLIP_DENSE, CLIP_GLOBAL, POS_EMBED_MODES, attention_pool_tokens, clip_embedding_shapes
from .imagenet_weights import load_bottom_up_weights
from .norm import convert_norm


def clip_attention_pool(in_channels: int, output_dim: int, heads: int = 0, grid: int = 7) -> AttentionPool2d:
    """open_clip's AttentionPool2d initialised as CLIP initialises its own (projections normal with
    std in_channels^-0.5, positions normal / sqrt(in_channels)); heads 0 = CLIP's in_channels / 64."""
    heads = heads or max(1, in_channels // 64)
    if in_channels % heads:
        raise ValueError(f"MODEL.ANY_BACKBONE.POOL_HEADS: {heads} heads do not divide the last stage's {in_channels} channels")
    pool = AttentionPool2d(grid, in_channels, heads, output_dim)
    std = in_channels ** -0.5
    for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
        nn.init.normal_(proj.weight, std=std)
    return pool


class LanguageGuidedBackbone(Backbone):
    """A bottom-up backbone's features plus CLIP-style embeddings of its last stage.

    Args:
        bottom_up: a Detectron2 backbone emitting ``last_stage`` (and the other stages to pass on).
        embed_dim: the pool's output width, the text tower's embedding dimension.
        heads: attention heads of the pool (0 = channels / 64).
        pos_embed_grid: side of the pool's square positional grid.
        pos_embed_mode: "interpolate" (the grid resized to every input) or "grid_crop" (top-left block).
        last_stage: the feature the pool reads (stride 32 for res5).
    """

    def __init__(self, bottom_up: Backbone, embed_dim: int, heads: int = 0, pos_embed_grid: int = 7,
                 pos_embed_mode: str = "interpolate", last_stage: str = "res5"):
        super().__init__()
        shapes = bottom_up.output_shape()
        if last_stage not in shapes:
            raise ValueError(f"the bottom-up {type(bottom_up).__name__} emits {sorted(shapes)}, not the last stage '{last_stage}'")
        if pos_embed_mode not in POS_EMBED_MODES:
            raise ValueError(f"MODEL.ANY_BACKBONE.POS_EMBED_MODE: expected one of {POS_EMBED_MODES}, got '{pos_embed_mode}'")
        self.bottom_up = bottom_up
        self.last_stage = last_stage
        self.pos_embed_mode = pos_embed_mode
        self.embed_dim = embed_dim
        self.attnpool = clip_attention_pool(shapes[last_stage].channels, embed_dim, heads, pos_embed_grid)
        self._shapes = {**shapes, **clip_embedding_shapes(embed_dim, dense_stride=shapes[last_stage].stride)}
        self._out_features = list(self._shapes)

    @property
    def size_divisibility(self) -> int:
        return self.bottom_up.size_divisibility

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = self.bottom_up(x)
        outputs[CLIP_GLOBAL], outputs[CLIP_DENSE] = attention_pool_tokens(self.attnpool, outputs[self.last_stage], self.pos_embed_mode)
        return outputs


def build_bottom_up(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """MODEL.ANY_BACKBONE.BOTTOM_UP, its norms per MODEL.ANY_BACKBONE.NORM, its ImageNet weights loaded."""
    a = cfg.MODEL.ANY_BACKBONE
    if a.BOTTOM_UP not in BACKBONE_REGISTRY:
        raise ValueError(f"MODEL.ANY_BACKBONE.BOTTOM_UP '{a.BOTTOM_UP}' is not a registered Detectron2 backbone")
    bottom_up = BACKBONE_REGISTRY.get(a.BOTTOM_UP)(cfg, input_shape)
    if "res5" not in bottom_up.output_shape():
        raise ValueError(f"MODEL.ANY_BACKBONE.BOTTOM_UP '{a.BOTTOM_UP}' does not emit res5 (its out features: "
                         f"{sorted(bottom_up.output_shape())}); DenseCLIP and the FPN read res2..res5")
    if a.WEIGHTS:
        load_bottom_up_weights(bottom_up, a.WEIGHTS)
    # After loading: FrozenBN conversion keeps the loaded statistics.
    return convert_norm(bottom_up, a.NORM, cfg.MODEL.DEVICE)


@BACKBONE_REGISTRY.register()
def build_language_guided_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """MODEL.ANY_BACKBONE's bottom-up + a new CLIP-style attention pool whose output width is the
    text tower's (MODEL.DENSECLIP.TEXT_ENCODER_MODEL, else MODEL.CLIP.MODEL_NAME)."""
    a = cfg.MODEL.ANY_BACKBONE
    return LanguageGuidedBackbone(
        build_bottom_up(cfg, input_shape), a.POOL_DIM or text_embed_dim(cfg), heads=a.POOL_HEADS,
        pos_embed_grid=a.POS_EMBED_GRID, pos_embed_mode=a.POS_EMBED_MODE,
    )


@BACKBONE_REGISTRY.register()
def build_bottom_up_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """MODEL.ANY_BACKBONE's bottom-up + FPN (P2-P6), for the plain Mask R-CNN baselines."""
    return fpn_on(cfg, build_bottom_up(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_bottom_up_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """MODEL.ANY_BACKBONE's bottom-up + FPN (P3-P7, P6 from res5 as DenseCLIP's RetinaNet), for the
    plain RetinaNet baselines."""
    bottom_up = build_bottom_up(cfg, input_shape)
    return fpn_on(cfg, bottom_up, retinanet_top_block(cfg, bottom_up.output_shape()["res5"].channels))


@BACKBONE_REGISTRY.register()
def build_bottom_up_semantic_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """MODEL.ANY_BACKBONE's bottom-up + the segmentation FPN (P2-P5), for the plain Semantic FPN baselines."""
    return semantic_fpn_on(cfg, build_bottom_up(cfg, input_shape))
