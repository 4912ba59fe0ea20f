"""Language-guided heads: classifiers whose weights are the (per-image) text embeddings, so the set
of classes is whatever vocabulary the text encoder was given."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from ..backbone.build import text_embed_dim
from .vocabulary_swap import VocabularySlice

HEAD_CHOICES = ("language", "stock")


def uses_language_heads(cfg: CfgNode) -> bool:
    """MODEL.DENSECLIP.HEAD, validated: True for the language-guided heads, False for stock ones."""
    head = cfg.MODEL.DENSECLIP.HEAD
    if head not in HEAD_CHOICES:
        raise ValueError(f"MODEL.DENSECLIP.HEAD: expected one of {HEAD_CHOICES}, got '{head}'")
    return head == "language"


def text_classifier_arguments(cfg: CfgNode) -> Dict:
    """The config arguments of a classifier whose weights are the text embeddings (Fast R-CNN box
    predictor, Semantic FPN pixel classifier): text width (the text tower's, :func:`text_embed_dim`),
    initial logit scale, and whether it learns."""
    return {
        "text_dim": text_embed_dim(cfg),
        "logit_scale": cfg.MODEL.DENSECLIP.CLASSIFIER_LOGIT_SCALE,
        "learn_logit_scale": cfg.MODEL.DENSECLIP.LEARN_LOGIT_SCALE,
    }


class LogitScale(nn.Module):
    """exp(s) with s = log(init); learnable or fixed, capped at 100 as in CLIP."""

    def __init__(self, init: float, learnable: bool):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


class DenseCLIPRetinaNetHead(RetinaNetHead):
    """Detectron2's RetinaNet head (same modules, same initialisation) that declares its per-class
    tensors: the classifier's outputs, one block of K classes per anchor."""

    @configurable
    def __init__(self, *, num_anchors: int, **kwargs):
        super().__init__(num_anchors=num_anchors, **kwargs)
        self.num_anchors = num_anchors
        self.num_classes = kwargs["num_classes"]

    @property
    def language_guided(self) -> bool:
        return False

    def vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        return {f"cls_score.{p}": VocabularySlice(dim=0, groups=self.num_anchors) for p in ("weight", "bias")}

    def set_num_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes


class LanguageGuidedRetinaNetHead(DenseCLIPRetinaNetHead):
    """RetinaNet head whose class logits are cosine similarities between per-anchor embeddings and
    projected text embeddings, times a logit scale, plus a bias initialised to the focal-loss prior.
    Box regression and the conv towers are Detectron2's."""

    @configurable
    def __init__(
        self,
        *,
        text_dim: int,
        cls_embed_dim: int = 64,
        logit_scale: float = 5.0,
        learn_logit_scale: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        in_channels = self.cls_score.in_channels
        self.cls_embed_dim = cls_embed_dim
        self.cls_score = nn.Conv2d(in_channels, self.num_anchors * cls_embed_dim, kernel_size=3, padding=1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.text_proj = nn.Linear(text_dim, cls_embed_dim)
        prior_prob = kwargs.get("prior_prob", 0.01)
        self.cls_bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))
        self.logit_scale = LogitScale(logit_scale, learn_logit_scale)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: List[ShapeSpec]) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(
            text_dim=text_embed_dim(cfg),
            cls_embed_dim=cfg.MODEL.DENSECLIP.RETINANET_CLS_EMBED_DIM,
            logit_scale=cfg.MODEL.DENSECLIP.RETINANET_LOGIT_SCALE,
            learn_logit_scale=cfg.MODEL.DENSECLIP.LEARN_LOGIT_SCALE,
        )
        return ret

    @property
    def language_guided(self) -> bool:
        return True

    def vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        return {}  # the classifier is the text: nothing per class

    def forward(self, features: List[torch.Tensor], text_embeddings: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Returns per-level logits (N x A*K x H x W, anchor-major as Detectron2 expects) and deltas.

        The logits are computed location-major, as one batched matmul of contiguous (H*W*A) x E
        anchor embeddings with the E x K classifier, and returned as a permuted view of that
        N x H x W x A x K tensor: Detectron2's ``permute_to_N_HWA_K`` then needs no copy.
        """
        text = F.normalize(self.text_proj(text_embeddings), dim=-1)
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(features[0].shape[0], -1, -1)
        classifier = (text * self.logit_scale()).transpose(1, 2)  # N x E x K
        logits, bbox_reg = [], []
        for feature in features:
            n, _, h, w = feature.shape
            embed = self.cls_score(self.cls_subnet(feature))  # N x A*E x H x W
            embed = embed.permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, self.cls_embed_dim)
            embed = F.normalize(embed, dim=-1)
            cls = torch.bmm(embed, classifier.to(embed.dtype)).add_(self.cls_bias)  # N x HWA x K
            logits.append(cls.view(n, h, w, -1).permute(0, 3, 1, 2))
            bbox_reg.append(self.bbox_pred(self.bbox_subnet(feature)))
        return logits, bbox_reg


class TextEmbeddingFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN predictor: region features projected to CLIP space, cosine logits against the text
    embeddings of the image's vocabulary and a learned background embedding; class-agnostic boxes."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, text_dim: int, logit_scale: float = 20.0,
                 learn_logit_scale: bool = True, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.cls_score = nn.Linear(self.cls_score.in_features, text_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.background_embedding = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.logit_scale = LogitScale(logit_scale, learn_logit_scale)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(text_classifier_arguments(cfg))
        return ret

    def forward(self, x: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None,
                num_per_image: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if text_embeddings is None:
            raise ValueError("TextEmbeddingFastRCNNOutputLayers needs the text embeddings of the vocabulary")
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        region = F.normalize(self.cls_score(x), dim=-1)
        background = F.normalize(self.background_embedding, dim=-1).to(region.dtype)
        text = F.normalize(text_embeddings, dim=-1).to(region.dtype)
        if text.dim() == 2:
            classifiers = [torch.cat([text, background[None]], dim=0)]
            chunks = [region]
        else:
            if num_per_image is None:
                raise ValueError("per-image text embeddings need the number of regions of each image")
            classifiers = [torch.cat([t, background[None]], dim=0) for t in text]
            chunks = region.split(list(num_per_image))
        scores = torch.cat([r @ c.t() for r, c in zip(chunks, classifiers)], dim=0) * self.logit_scale()
        return scores, self.bbox_pred(x)


@ROI_HEADS_REGISTRY.register()
class DenseCLIPROIHeads(StandardROIHeads):
    """Standard ROI heads; with MODEL.DENSECLIP.HEAD "language" the box classifier is the per-image
    text embeddings, given explicitly to ``forward``, and box/mask predictions are class-agnostic."""

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        if uses_language_heads(cfg):
            # Open vocabulary: per-class box deltas / masks cannot exist for classes unseen in training.
            wrong = [k for k, v in (("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG),
                                    ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK)) if not v]
            if wrong:
                raise ValueError(
                    f"MODEL.DENSECLIP.HEAD 'language' predicts class-agnostic boxes and masks (any vocabulary): "
                    f"set {' and '.join(k + ' True' for k in wrong)}"
                )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        ret = super()._init_box_head(cfg, input_shape)
        if uses_language_heads(cfg):
            ret["box_predictor"] = TextEmbeddingFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @property
    def language_guided(self) -> bool:
        return isinstance(self.box_predictor, TextEmbeddingFastRCNNOutputLayers)

    def vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        """The per-class tensors of the stock predictors: box classifier (+ background), class-specific
        box deltas and masks; none for the language-guided ones (the classifier is the text)."""
        if self.language_guided:
            return {}
        names = {f"box_predictor.cls_score.{p}": VocabularySlice(dim=0, suffix=1) for p in ("weight", "bias")}
        if self.box_predictor.bbox_pred.out_features > 4:  # class-specific boxes
            names.update({f"box_predictor.bbox_pred.{p}": VocabularySlice(dim=0, per_class=4) for p in ("weight", "bias")})
        if self.mask_on and self.mask_head.predictor.out_channels > 1:  # one mask per class
            names.update({f"mask_head.predictor.{p}": VocabularySlice(dim=0) for p in ("weight", "bias")})
        return names

    def forward(self, images, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None, text_embeddings: Optional[torch.Tensor] = None):
        """StandardROIHeads.forward; the language-guided box predictor also takes ``text_embeddings``
        (B x K x D), which Detectron2's signature has no place for."""
        if not self.language_guided:
            return super().forward(images, features, proposals, targets)
        if text_embeddings is None:
            raise ValueError("language-guided ROI heads need the text embeddings of the vocabulary")
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_language_box(features, proposals, text_embeddings)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        instances = self._forward_language_box(features, proposals, text_embeddings)
        return self.forward_with_given_boxes(features, instances), {}

    def _forward_language_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances], text_embeddings: torch.Tensor):
        """StandardROIHeads._forward_box with the text embeddings and per-image region counts
        handed to the box predictor."""
        box_features = self.box_pooler([features[f] for f in self.box_in_features], [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features, text_embeddings, [len(p) for p in proposals])
        del box_features
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                    for proposals_per_image, boxes in zip(proposals, pred_boxes):
                        proposals_per_image.proposal_boxes = Boxes(boxes)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return pred_instances

    def set_num_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.box_predictor.num_classes = num_classes
