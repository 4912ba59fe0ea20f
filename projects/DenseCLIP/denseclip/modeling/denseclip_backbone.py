"""DenseCLIP's backbone: CLIP image encoder, context-aware text embeddings, pixel-text score maps
concatenated to res5, and Detectron2's FPN on top.

It is a Detectron2 ``Backbone``: besides the FPN levels, its output dict carries the per-image
text embeddings and the score maps under TEXT_EMBEDDINGS / SCORE_MAP, which stock heads ignore
(they index features by name) and DenseCLIP's heads and losses use.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..backbone import CLIP_DENSE, CLIP_GLOBAL, build_clip_bottom_up
from ..backbone.build import fpn_on, retinanet_top_block
from ..text import ContextDecoder, PromptTextEncoder
from .pixel_text import pixel_text_score_map
from .vocabulary import resolve_class_names

logger = logging.getLogger(__name__)

TEXT_EMBEDDINGS = "text_embeddings"  # B x K x D
SCORE_MAP = "pixel_text_score_map"  # B x K x H/32 x W/32


class FeaturePassthrough(Backbone):
    """The FPN's bottom-up: hands on features computed beforehand (res5 with score maps appended).

    Detectron2's FPN calls ``self.bottom_up(x)``; passing a dict of ready features keeps its
    top-down code untouched.
    """

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self.shapes = dict(shapes)
        self._out_features = list(shapes)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self.shapes)

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return features


class DenseCLIPBackbone(Backbone):
    def __init__(
        self,
        image_encoder: Backbone,
        text_encoder: PromptTextEncoder,
        context_decoder: Optional[ContextDecoder],
        class_names: List[str],
        fpn: FPN,
        tau: float = 0.07,
        gamma_init: float = 1e-4,
        score_map_feature: str = "res5",
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.context_decoder = context_decoder
        embed_dim = image_encoder.embed_dim
        # Residual scale of the context decoder's update (small at start: text stays CLIP's).
        self.gamma = nn.Parameter(torch.full((embed_dim,), gamma_init)) if context_decoder is not None else None
        self.fpn = fpn
        self.tau = tau
        self.score_map_feature = score_map_feature
        self.class_names = list(class_names)
        self._cached_text: Optional[torch.Tensor] = None
        # Score-map columns of the FPN convs for the vocabulary the model was trained with, kept
        # the first time the vocabulary is swapped so that swapping back is exact.
        self._base_vocabulary: Optional[List[str]] = None
        self._base_score_columns: Dict[str, torch.Tensor] = {}
        self._register_load_state_dict_pre_hook(self._drop_text_cache)

    # -------------------------------------------------------------------------------- Backbone API
    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def embed_dim(self) -> int:
        return self.image_encoder.embed_dim

    # -------------------------------------------------------------------------------- text side
    def _drop_text_cache(self, *args, **kwargs) -> None:
        self._cached_text = None

    def train(self, mode: bool = True) -> "DenseCLIPBackbone":
        self._cached_text = None  # the learnable context changes while training
        return super().train(mode)

    def _text_is_learnable(self) -> bool:
        return any(p.requires_grad for p in self.text_encoder.parameters())

    def class_text_embeddings(self) -> torch.Tensor:
        """K x D text embeddings of the vocabulary (before context refinement).

        They do not depend on the image, so outside training (or with a fully frozen prompt) they
        are computed once per vocabulary and cached: inference never re-runs the text encoder.
        """
        if self.training and self._text_is_learnable() and torch.is_grad_enabled():
            return self.text_encoder(self.class_names)
        if self._cached_text is None:
            with torch.no_grad():
                self._cached_text = self.text_encoder(self.class_names)
        return self._cached_text

    def refine_text(self, text: torch.Tensor, global_embed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Context-aware prompting: text attends to the image's tokens [global, dense...]."""
        b = dense.shape[0]
        text = text.unsqueeze(0).expand(b, -1, -1)
        if self.context_decoder is None:
            return text
        visual = torch.cat([global_embed.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)
        return text + self.gamma * self.context_decoder(text, visual)

    # -------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.image_encoder(x)
        global_embed, dense = features.pop(CLIP_GLOBAL), features.pop(CLIP_DENSE)
        text = self.refine_text(self.class_text_embeddings().to(dense.dtype), global_embed, dense)
        score_map = pixel_text_score_map(dense, text, self.tau)
        target = features[self.score_map_feature]
        if score_map.shape[-2:] != target.shape[-2:]:
            # ViT dense embeddings are at stride 16; res5 is at stride 32.
            resized = nn.functional.interpolate(score_map, size=target.shape[-2:], mode="bilinear", align_corners=False)
        else:
            resized = score_map
        features[self.score_map_feature] = torch.cat([target, resized.to(target.dtype)], dim=1)
        outputs = self.fpn(features)
        outputs[TEXT_EMBEDDINGS] = text
        outputs[SCORE_MAP] = score_map
        return outputs

    # -------------------------------------------------------------------------------- vocabulary
    def _score_convs(self) -> Dict[str, nn.Conv2d]:
        """FPN convs that read the score-map channels: the lateral conv of the score-map feature and,
        for RetinaNet, P6 computed from it."""
        stride = self.fpn.bottom_up.shapes[self.score_map_feature].stride
        convs = {"lateral": getattr(self.fpn, f"fpn_lateral{int(math.log2(stride))}")}
        top = self.fpn.top_block
        if top is not None and getattr(top, "in_feature", None) == self.score_map_feature:
            convs["top_block"] = top.p6
        return convs

    def set_vocabulary(self, class_names: List[str]) -> None:
        """Replace the class names without rebuilding the model.

        The text embeddings are recomputed (and cached). The FPN weights reading the score-map
        channels are re-indexed: a name of the training vocabulary keeps its learned weights, a new
        name gets the mean of the training vocabulary's weights (a class-agnostic response).
        """
        names = list(class_names)
        self.text_encoder.tokenize(names)  # validates the vocabulary before anything changes
        convs = self._score_convs()
        num_visual = self.fpn.bottom_up.shapes[self.score_map_feature].channels - self.num_classes
        if self._base_vocabulary is None:
            self._base_vocabulary = list(self.class_names)
            self._base_score_columns = {k: conv.weight.detach()[:, num_visual:].clone() for k, conv in convs.items()}
        base_index = {name: i for i, name in enumerate(self._base_vocabulary)}
        for key, conv in convs.items():
            base = self._base_score_columns[key].to(conv.weight.device)
            mean = base.mean(dim=1, keepdim=True)
            columns = [base[:, base_index[n] : base_index[n] + 1] if n in base_index else mean for n in names]
            weight = torch.cat([conv.weight.detach()[:, :num_visual]] + columns, dim=1)
            conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
            conv.in_channels = weight.shape[1]
        old = self.fpn.bottom_up.shapes[self.score_map_feature]
        self.fpn.bottom_up.shapes[self.score_map_feature] = ShapeSpec(channels=num_visual + len(names), stride=old.stride)
        self.class_names = names
        self._cached_text = None
        logger.info("Vocabulary set to %d classes", len(names))


def build_denseclip_backbone(cfg: CfgNode, input_shape: ShapeSpec, retinanet: bool) -> DenseCLIPBackbone:
    if input_shape.channels not in (None, 3):
        raise ValueError(f"DenseCLIP takes 3-channel RGB input, got {input_shape.channels} channels")
    d = cfg.MODEL.DENSECLIP
    class_names = resolve_class_names(cfg)
    image_encoder, clip_model = build_clip_bottom_up(cfg, with_attention_pool=True)
    text_encoder = PromptTextEncoder(
        clip_model,
        prompt=d.PROMPT,
        n_context=d.N_CONTEXT if d.PROMPT == "learnable" else 0,
        template=d.TEMPLATE,
        name_context_length=d.NAME_CONTEXT_LENGTH,
        context_length=d.TEXT_CONTEXT_LENGTH,
    )
    decoder = None
    if d.CONTEXT_DECODER.ENABLED:
        c = d.CONTEXT_DECODER
        decoder = ContextDecoder(image_encoder.embed_dim, width=c.WIDTH, heads=c.HEADS, layers=c.LAYERS, dropout=c.DROPOUT)
    shapes = image_encoder.output_shape()
    if d.SCORE_MAP_FEATURE not in shapes:
        raise ValueError(f"MODEL.DENSECLIP.SCORE_MAP_FEATURE '{d.SCORE_MAP_FEATURE}' is not one of {list(shapes)}")
    target = shapes[d.SCORE_MAP_FEATURE]
    shapes[d.SCORE_MAP_FEATURE] = ShapeSpec(channels=target.channels + len(class_names), stride=target.stride)
    bottom_up = FeaturePassthrough(shapes)
    if retinanet:
        top_block = retinanet_top_block(cfg, shapes["res5"].channels)
    else:
        top_block = LastLevelMaxPool()
    fpn = fpn_on(cfg, bottom_up, top_block)
    return DenseCLIPBackbone(
        image_encoder, text_encoder, decoder, class_names, fpn,
        tau=d.TAU, gamma_init=d.CONTEXT_DECODER.GAMMA_INIT, score_map_feature=d.SCORE_MAP_FEATURE,
    )


@BACKBONE_REGISTRY.register()
def build_denseclip_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """DenseCLIP backbone with P2-P6 (Mask R-CNN)."""
    return build_denseclip_backbone(cfg, input_shape, retinanet=False)


@BACKBONE_REGISTRY.register()
def build_denseclip_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """DenseCLIP backbone with P3-P7, P6 from res5 with its score maps (RetinaNet)."""
    return build_denseclip_backbone(cfg, input_shape, retinanet=True)
