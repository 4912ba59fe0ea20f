"""Detectron2's FPN on DenseCLIP's fused input (image features with the score maps appended)."""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..backbone.build import fpn_on, retinanet_top_block, semantic_fpn_on


class FusedFeatures(Backbone):
    """The FPN's bottom-up: hands on features computed beforehand (res5 with the score maps).

    Detectron2's FPN calls ``self.bottom_up(x)``; passing it the dict of fused features keeps its
    top-down code untouched. It declares the fused shapes (which change with the vocabulary).
    """

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self.set_shapes(shapes)

    def set_shapes(self, shapes: Dict[str, ShapeSpec]) -> None:
        self._shapes = dict(shapes)
        self._out_features = list(shapes)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return features


def build_detection_fpn(cfg: CfgNode, fused_shapes: Dict[str, ShapeSpec]) -> FPN:
    """P2-P6 (Mask R-CNN) on the fused features."""
    return fpn_on(cfg, FusedFeatures(fused_shapes), LastLevelMaxPool())


def build_retinanet_fpn(cfg: CfgNode, fused_shapes: Dict[str, ShapeSpec]) -> FPN:
    """P3-P7 with P6 computed from the fused res5 (RetinaNet, as the reference's
    ``add_extra_convs='on_input'``)."""
    return fpn_on(cfg, FusedFeatures(fused_shapes), retinanet_top_block(cfg, fused_shapes["res5"].channels))


def build_semantic_fpn(cfg: CfgNode, fused_shapes: Dict[str, ShapeSpec]) -> FPN:
    """The reference's segmentation neck, P2-P5 (:func:`~denseclip.backbone.build.semantic_fpn_on`)."""
    return semantic_fpn_on(cfg, FusedFeatures(fused_shapes))
