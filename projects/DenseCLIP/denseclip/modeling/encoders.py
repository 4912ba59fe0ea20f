"""DenseCLIP's two encoders from one config: the image encoder MODEL.BACKBONE.NAME (a CLIP backbone,
or any backbone wrapped with a CLIP-style attention pool) and the open_clip model whose text tower
encodes the prompts."""
from __future__ import annotations

from typing import Tuple

import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..backbone.build import create_clip_from_config, create_text_clip_from_config, text_embed_dim, wrap_clip_visual
from ..backbone.clip_resnet import CLIP_DENSE

# The image encoders DenseCLIP reads CLIP embeddings from (MODEL.BACKBONE.NAME of a DenseCLIP config).
DENSECLIP_IMAGE_ENCODERS = ("build_clip_backbone", "build_language_guided_backbone")


def build_denseclip_encoders(cfg: CfgNode, strict_input_size: bool = True) -> Tuple[Backbone, nn.Module]:
    """The image encoder MODEL.BACKBONE.NAME (emitting ``clip_dense`` / ``clip_global``) and the
    open_clip model of the text tower: for CLIP's image encoder ("build_clip_backbone", always with
    its attention pool), the same CLIP model unless MODEL.DENSECLIP.TEXT_ENCODER_MODEL names another;
    for any other image encoder, the one :func:`create_text_clip_from_config` names.
    ``strict_input_size`` False: a CLIP image encoder takes inputs of any size."""
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_clip_backbone":
        clip_model = create_clip_from_config(cfg)
        # Always with CLIP's attention pool: DenseCLIP reads its dense and global embeddings.
        backbone = wrap_clip_visual(cfg, clip_model.visual, with_attention_pool=True, strict_input_size=strict_input_size)
        text_model = create_text_clip_from_config(cfg) if cfg.MODEL.DENSECLIP.TEXT_ENCODER_MODEL else clip_model
    else:
        if name not in BACKBONE_REGISTRY:
            removed = " (the DenseCLIP backbones build_denseclip_*_backbone are gone: the meta-architecture builds " \
                "the text side and the FPN itself)" if name.startswith("build_denseclip") else ""
            raise ValueError(f"MODEL.BACKBONE.NAME '{name}' is not a registered Detectron2 backbone; a DenseCLIP "
                             f"config names its image encoder there, one of {DENSECLIP_IMAGE_ENCODERS}{removed}")
        backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        if CLIP_DENSE not in backbone.output_shape():
            raise ValueError(
                f"DenseCLIP's image encoder must emit CLIP embeddings ({CLIP_DENSE}): MODEL.BACKBONE.NAME must "
                f"be one of {DENSECLIP_IMAGE_ENCODERS}, got '{name}'"
            )
        text_model = create_text_clip_from_config(cfg)
    image_dim, text_dim = backbone.output_shape()[CLIP_DENSE].channels, text_embed_dim(cfg)
    if image_dim != text_dim:
        raise ValueError(
            f"the image encoder's embeddings ({image_dim}-d) and the text tower's ({text_dim}-d) must share one space: "
            "choose MODEL.DENSECLIP.TEXT_ENCODER_MODEL (or MODEL.ANY_BACKBONE.POOL_DIM 0) accordingly"
        )
    return backbone, text_model
