"""DenseCLIP's features as a Detectron2 backbone: image -> CLIP image encoder -> text side (text
embeddings, pixel-text score maps) -> Detectron2's FPN over the image features + score maps.

Registered in BACKBONE_REGISTRY, so ``build_backbone(cfg)`` (and with it Detectron2's meta-architecture
``from_config``) builds the heads on the fused FPN's shapes. The DenseCLIP meta-architectures take it
apart into their ``backbone`` (the CLIP image encoder), ``text_side`` and ``fpn``: the layout of
checkpoints and of the reference's converted weights."""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone

from ..text import ContextDecoder, PromptTextEncoder
from ..text.prompt_templates import prompt_ensemble
from .encoders import build_denseclip_encoders
from .fused_fpn import build_fused_fpn
from .text_side import DenseCLIPTextSide
from .vocabulary import vocabulary_from_config

# Registered builders (MODEL.BACKBONE.NAME) of a DenseCLIPBackbone, which the DenseCLIP
# meta-architectures take apart: P2-P6 (R-CNN) or P3-P7 (RetinaNet). A new builder adds its name.
DENSECLIP_BACKBONES = ["build_denseclip_backbone", "build_denseclip_retinanet_backbone"]


class DenseCLIPParts(NamedTuple):
    backbone: Backbone  # the CLIP image encoder
    text_side: DenseCLIPTextSide
    fpn: FPN


def build_denseclip_parts(
    cfg: CfgNode,
    vocabulary: Sequence[str],
    retinanet: bool,
    fpn_builder: Optional[Callable[[CfgNode, Dict[str, ShapeSpec]], FPN]] = None,
) -> DenseCLIPParts:
    """Image encoder (emitting CLIP embeddings: DenseCLIP reads its dense and global embeddings) and
    text tower (:func:`build_denseclip_encoders`), text side for ``vocabulary`` and fused FPN.
    ``fpn_builder`` builds the FPN on the fused features' shapes (default: the detectors' FPN,
    :func:`build_fused_fpn`)."""
    d = cfg.MODEL.DENSECLIP
    backbone, clip_model = build_denseclip_encoders(cfg)
    prompt_encoder = PromptTextEncoder(
        clip_model,  # only its text tower is used
        prompt=d.PROMPT,
        n_context=d.N_CONTEXT if d.PROMPT == "learnable" else 0,
        template=d.TEMPLATE,
        templates=prompt_ensemble(d.PROMPT_ENSEMBLE) if d.PROMPT_ENSEMBLE else None,
        name_context_length=d.NAME_CONTEXT_LENGTH,
        context_length=d.TEXT_CONTEXT_LENGTH,
        # The one place that decides whether CLIP's text weights train.
        freeze_text_tower=cfg.SOLVER.TEXT_ENCODER_MULTIPLIER == 0,
    )
    decoder = None
    if d.CONTEXT_DECODER.ENABLED:
        c = d.CONTEXT_DECODER
        decoder = ContextDecoder(backbone.embed_dim, width=c.WIDTH, heads=c.HEADS, layers=c.LAYERS, dropout=c.DROPOUT)
    text_side = DenseCLIPTextSide(
        prompt_encoder, decoder, vocabulary, embed_dim=backbone.embed_dim,
        tau=d.TAU, gamma_init=d.CONTEXT_DECODER.GAMMA_INIT, score_map_feature=d.SCORE_MAP_FEATURE,
        raw_score_map=d.FUSE_RAW_SCORES,
    )
    fused_shapes = text_side.fused_shapes(backbone.output_shape())
    fpn = fpn_builder(cfg, fused_shapes) if fpn_builder else build_fused_fpn(cfg, fused_shapes, retinanet)
    return DenseCLIPParts(backbone, text_side, fpn)


class DenseCLIPBackbone(Backbone):
    """The FPN levels of DenseCLIP's features (the text side's vocabulary fixes the score-map channels)."""

    def __init__(self, parts: DenseCLIPParts):
        super().__init__()
        self.image_encoder, self.text_side, self.fpn = parts

    def parts(self) -> DenseCLIPParts:
        return DenseCLIPParts(self.image_encoder, self.text_side, self.fpn)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        image_features = self.image_encoder(x)
        _, score_map = self.text_side(image_features)
        return self.fpn(self.text_side.fuse(image_features, score_map))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility


@BACKBONE_REGISTRY.register()
def build_denseclip_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> DenseCLIPBackbone:
    """DenseCLIP features with Detectron2's P2-P6 FPN (Mask R-CNN), for the config's vocabulary."""
    return DenseCLIPBackbone(build_denseclip_parts(cfg, vocabulary_from_config(cfg), retinanet=False))


@BACKBONE_REGISTRY.register()
def build_denseclip_retinanet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> DenseCLIPBackbone:
    """DenseCLIP features with P3-P7, P6 computed from res5 + score maps (RetinaNet, as the reference)."""
    return DenseCLIPBackbone(build_denseclip_parts(cfg, vocabulary_from_config(cfg), retinanet=True))
