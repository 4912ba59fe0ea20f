"""DenseCLIP meta-architectures: Detectron2's R-CNN and RetinaNet whose ``backbone`` is the CLIP image
encoder, with the DenseCLIP text side and an FPN over image features + score maps
(:class:`~denseclip.modeling.denseclip_mixin.DenseCLIPMetaArchMixin`). Their ``from_config`` is
Detectron2's, run on the registered DenseCLIP backbone (``modeling/denseclip_backbone.py``) with
the vocabulary's class count; their forward passes add the text to the heads and the pixel-text loss.

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
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.structures import Instances

from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin, detectron2_arguments
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, uses_language_heads
from .text_side import VocabularySlice


@META_ARCH_REGISTRY.register()
class DenseCLIPRCNN(DenseCLIPMetaArchMixin, GeneralizedRCNN):
    """Mask R-CNN / Faster R-CNN on DenseCLIP features; ROI heads: DenseCLIPROIHeads."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return detectron2_arguments(super().from_config, cfg, "MODEL.ROI_HEADS.NUM_CLASSES")

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
        if not do_postprocess:
            return results
        return self.add_score_maps(self._postprocess(results, batched_inputs, images.image_sizes), dense, batched_inputs, images)


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
        def with_head(cfg: CfgNode) -> Dict:
            # Detectron2's RetinaNet.from_config builds the stock head; the language-guided one
            # takes its place on the same feature shapes.
            ret = super(DenseCLIPRetinaNet, cls).from_config(cfg)
            if uses_language_heads(cfg):
                shapes = ret["backbone"].output_shape()
                ret["head"] = LanguageGuidedRetinaNetHead(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
            return ret

        return detectron2_arguments(with_head, cfg, "MODEL.RETINANET.NUM_CLASSES")

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
        return self.add_score_maps(GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes), dense,
                                   batched_inputs, images)
