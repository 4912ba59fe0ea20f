"""Semantic FPN decoders (Kirillov et al., Panoptic FPN): Detectron2's ``SemSegFPNHead`` with what the
reference's mmseg ``FPNHead`` adds, and a language-guided variant whose pixel classifier is the text.

The reference head (mmseg 0.19, ``decode_head``) is Detectron2's layout module for module: per level
``max(1, log2(stride / 4))`` x [3x3 conv + norm + ReLU (+ 2x bilinear upsampling)], summed at stride 4,
then a 1x1 classifier. It adds Dropout2d before the classifier (MODEL.SEM_SEG_HEAD.DROPOUT) and
averages the cross-entropy over all pixels, ignored ones included (MODEL.SEM_SEG_HEAD.LOSS_AVERAGE);
its classifier keeps PyTorch's default initialisation (the reference never calls the head's
``init_weights``), its convs Kaiming's (ConvModule's, = Detectron2's ``c2_msra_fill``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

from .heads import LogitScale, text_classifier_arguments
from .vocabulary_swap import VocabularySlice

__all__ = ["LOSS_AVERAGES", "LanguageGuidedSemanticFPNHead", "SemanticFPNHead", "semantic_cross_entropy"]

LOSS_AVERAGES = ("valid_pixels", "all_pixels")


def semantic_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int, average: str) -> torch.Tensor:
    """Per-pixel cross-entropy of ``logits`` (B x K x h x w, bilinearly resized to the targets' size
    first, in float32) against ``targets`` (B x H x W), averaged over the valid pixels (Detectron2) or
    over all pixels (mmseg 0.19, the reference: an ignored pixel adds 0 to the sum and 1 to the count)."""
    if average not in LOSS_AVERAGES:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.LOSS_AVERAGE: expected one of {LOSS_AVERAGES}, got '{average}'")
    logits = logits.float()  # https://github.com/pytorch/pytorch/issues/48163
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    if average == "valid_pixels":
        return F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value)
    return F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore_value) / targets.numel()


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(SemSegFPNHead):
    """Detectron2's ``SemSegFPNHead`` as the reference's mmseg ``FPNHead`` (see the module docstring)."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, dropout: float = 0.0, loss_average: str = "valid_pixels", **kwargs):
        super().__init__(input_shape, **kwargs)
        if loss_average not in LOSS_AVERAGES:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.LOSS_AVERAGE: expected one of {LOSS_AVERAGES}, got '{loss_average}'")
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.loss_average = loss_average
        self.predictor.reset_parameters()  # PyTorch's default, as the reference's conv_seg

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(dropout=cfg.MODEL.SEM_SEG_HEAD.DROPOUT, loss_average=cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGE)
        return ret

    @property
    def num_classes(self) -> int:
        return self.predictor.out_channels

    @property
    def language_guided(self) -> bool:
        return False

    def vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        """The pixel classifier's per-class outputs (DenseCLIP's vocabulary swap and checkpoint re-indexing)."""
        return {f"predictor.{p}": VocabularySlice(dim=0) for p in ("weight", "bias")}

    def decode(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed stride-4 map of the scale heads, after dropout: B x CONVS_DIM x H/4 x W/4. A level
        whose upsampled size differs (inputs not divisible by 32) is resized to it, as mmseg does."""
        x = self.scale_heads[0](features[self.in_features[0]])
        for head, name in zip(self.scale_heads[1:], self.in_features[1:]):
            y = head(features[name])
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + y
        return self.dropout(x)

    def layers(self, features: Dict[str, torch.Tensor], text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.predictor(self.decode(features))

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None,
                text_embeddings: Optional[torch.Tensor] = None) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Training: (None, {"loss_sem_seg"}); inference: (B x K x H x W logits at the input stride, {})."""
        x = self.layers(features, text_embeddings)
        if self.training:
            return None, self.losses(x, targets)
        return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False), {}

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        loss = semantic_cross_entropy(predictions, targets, self.ignore_value, self.loss_average)
        return {"loss_sem_seg": loss * self.loss_weight}


@SEM_SEG_HEADS_REGISTRY.register()
class LanguageGuidedSemanticFPNHead(SemanticFPNHead):
    """This project's extension (configs ``*_denseclip_language_*``): the classifier is the image's
    text embeddings. Each stride-4 pixel feature is projected to CLIP's embedding space (1x1 conv),
    and its logits are the cosine similarities with the context-refined class text embeddings times a
    learned scale; no weight belongs to a class, so the vocabulary can change at inference."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, text_dim: int, logit_scale: float = 20.0,
                 learn_logit_scale: bool = True, **kwargs):
        super().__init__(input_shape, **kwargs)
        conv_dims = self.predictor.in_channels
        # Replaces the K-way classifier; the pixel embeddings are compared with the text instead.
        self.predictor = Conv2d(conv_dims, text_dim, kernel_size=1)
        self.logit_scale = LogitScale(logit_scale, learn_logit_scale)
        self._num_classes = kwargs["num_classes"]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> Dict:
        ret = super().from_config(cfg, input_shape)
        ret.update(text_classifier_arguments(cfg))
        return ret

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def language_guided(self) -> bool:
        return True

    def vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        return {}  # the classifier is the text: nothing per class

    def set_num_classes(self, num_classes: int) -> None:
        self._num_classes = num_classes

    def layers(self, features: Dict[str, torch.Tensor], text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        if text_embeddings is None:
            raise ValueError("LanguageGuidedSemanticFPNHead classifies pixels with text embeddings: pass text_embeddings")
        pixels = F.normalize(self.predictor(self.decode(features)), dim=1)
        text = F.normalize(text_embeddings.to(pixels.dtype), dim=-1)
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(pixels.shape[0], -1, -1)
        return torch.einsum("bchw,bkc->bkhw", pixels, text) * self.logit_scale()
