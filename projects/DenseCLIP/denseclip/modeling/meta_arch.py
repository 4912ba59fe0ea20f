"""DenseCLIP meta-architectures: Detectron2's R-CNN and RetinaNet whose ``backbone`` is the CLIP image
encoder, with the DenseCLIP text side and an FPN over image features + score maps
(:class:`~denseclip.modeling.denseclip_mixin.DenseCLIPMetaArchMixin`).

Model layout (parameter name prefixes):
    backbone.    CLIP image encoder (res2..res5, clip_dense, clip_global)
    text_side.   prompt_encoder (learnable context, CLIP text tower), context_decoder, gamma
    fpn.         Detectron2's FPN on the fused features
    proposal_generator. / roi_heads. / head.   Detectron2's heads (or the language-guided ones)
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    GeneralizedRCNN,
    RetinaNet,
    build_anchor_generator,
    build_proposal_generator,
    build_roi_heads,
)
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Instances

from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin, build_denseclip_parts
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, uses_language_heads
from .text_side import VocabularySlice


@META_ARCH_REGISTRY.register()
class DenseCLIPRCNN(DenseCLIPMetaArchMixin, GeneralizedRCNN):
    """Mask R-CNN / Faster R-CNN on DenseCLIP features; ROI heads: DenseCLIPROIHeads."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        # Detectron2's from_config builds the heads on the backbone's shapes; here they read the FPN's.
        parts = build_denseclip_parts(cfg, retinanet=False)
        shapes = parts.fpn.output_shape()
        return {
            **parts._asdict(),
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pixel_text_loss_weight": cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT,
        }

    @property
    def language_guided(self) -> bool:
        return isinstance(self.roi_heads, DenseCLIPROIHeads) and self.roi_heads.language_guided

    def _set_head_num_classes(self, num_classes: int) -> None:
        self.roi_heads.set_num_classes(num_classes)

    def _head_vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        if self.language_guided:  # the classifier is the text: nothing per class
            return {}
        predictor = self.roi_heads.box_predictor
        names = {f"roi_heads.box_predictor.cls_score.{p}": VocabularySlice(dim=0, suffix=1) for p in ("weight", "bias")}
        if predictor.bbox_pred.out_features > 4:  # class-specific boxes
            names.update({f"roi_heads.box_predictor.bbox_pred.{p}": VocabularySlice(dim=0, per_class=4) for p in ("weight", "bias")})
        mask_head = getattr(self.roi_heads, "mask_head", None)
        if mask_head is not None and mask_head.predictor.out_channels > 1:  # one mask per class
            names.update({f"roi_heads.mask_head.predictor.{p}": VocabularySlice(dim=0) for p in ("weight", "bias")})
        return names

    def _head_text(self, dense: DenseCLIPFeatures) -> Dict[str, torch.Tensor]:
        return {"text_embeddings": dense.text_embeddings} if self.language_guided else {}

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        # Overridden: features come from extract_features, and the pixel-text loss is added.
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        dense = self.extract_features(images)
        proposals, proposal_losses = self.proposal_generator(images, dense.features, gt_instances)
        _, detector_losses = self.roi_heads(images, dense.features, proposals, gt_instances, **self._head_text(dense))
        return {**detector_losses, **proposal_losses, **self.pixel_text_losses(dense, gt_instances, images)}

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]], detected_instances: Optional[List[Instances]] = None,
                  do_postprocess: bool = True):
        # Overridden: features come from extract_features, and the ROI heads take the text.
        images = self.preprocess_image(batched_inputs)
        dense = self.extract_features(images)
        if detected_instances is None:
            proposals, _ = self.proposal_generator(images, dense.features, None)
            results, _ = self.roi_heads(images, dense.features, proposals, None, **self._head_text(dense))
        else:
            results = self.roi_heads.forward_with_given_boxes(dense.features, [x.to(self.device) for x in detected_instances])
        return self._postprocess(results, batched_inputs, images.image_sizes) if do_postprocess else results


@META_ARCH_REGISTRY.register()
class TopKRetinaNet(TopKCandidateDecoding, RetinaNet):
    """Detectron2's RetinaNet with an exact, fast top-k candidate selection (same detections, same
    weights), or the reference's (MODEL.RETINANET.CANDIDATE_SELECTION). DenseCLIPRetinaNet builds on
    it and the CLIP baselines use it, so that the two differ only in what DenseCLIP adds."""

    @configurable
    def __init__(self, *, candidate_selection: str = "pairs", **kwargs):
        super().__init__(**kwargs)
        if candidate_selection not in CANDIDATE_SELECTIONS:
            raise ValueError(
                f"MODEL.RETINANET.CANDIDATE_SELECTION: expected one of {CANDIDATE_SELECTIONS}, got '{candidate_selection}'"
            )
        self.candidate_selection = candidate_selection

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return {**super().from_config(cfg), "candidate_selection": cfg.MODEL.RETINANET.CANDIDATE_SELECTION}


@META_ARCH_REGISTRY.register()
class DenseCLIPRetinaNet(DenseCLIPMetaArchMixin, TopKRetinaNet):
    """RetinaNet on DenseCLIP features with, by default, the language-guided head."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        # Detectron2's from_config builds the head on the backbone's shapes; here it reads the FPN's.
        r = cfg.MODEL.RETINANET
        parts = build_denseclip_parts(cfg, retinanet=True)
        shapes: List[ShapeSpec] = [parts.fpn.output_shape()[f] for f in r.IN_FEATURES]
        head_type = LanguageGuidedRetinaNetHead if uses_language_heads(cfg) else RetinaNetHead
        return {
            **parts._asdict(),
            "head": head_type(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": r.NUM_CLASSES,
            "head_in_features": r.IN_FEATURES,
            "focal_loss_alpha": r.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": r.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": r.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": r.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": r.SCORE_THRESH_TEST,
            "test_topk_candidates": r.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": r.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "candidate_selection": r.CANDIDATE_SELECTION,
            "pixel_text_loss_weight": cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT,
        }

    @property
    def language_guided(self) -> bool:
        return isinstance(self.head, LanguageGuidedRetinaNetHead)

    def _set_head_num_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.num_classes = num_classes

    def _head_vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        if self.language_guided:  # the classifier is the text: nothing per class
            return {}
        anchors = self.head.cls_score.out_channels // self.num_classes
        return {f"head.cls_score.{p}": VocabularySlice(dim=0, groups=anchors) for p in ("weight", "bias")}

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        # Overridden: features come from extract_features, the language-guided head takes the text,
        # and the pixel-text loss is added.
        images = self.preprocess_image(batched_inputs)
        dense = self.extract_features(images)
        head_features = [dense.features[f] for f in self.head_in_features]
        if self.language_guided:
            predictions = self.head(head_features, dense.text_embeddings)
        else:
            predictions = self.head(head_features)
        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            losses = self.forward_training(images, head_features, predictions, gt_instances)
            return {**losses, **self.pixel_text_losses(dense, gt_instances, images)}
        results = self.forward_inference(images, head_features, predictions)
        return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
