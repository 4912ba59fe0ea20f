"""DenseCLIP meta-architectures: Detectron2's R-CNN and RetinaNet whose ``backbone`` is the image
encoder (MODEL.BACKBONE.NAME), with the DenseCLIP text side and an FPN over image features + score
maps (:class:`~denseclip.modeling.denseclip_mixin.DenseCLIPMetaArchMixin`). Their ``from_config``
composes the model explicitly, as Mask2Former's does: image encoder, text side for the vocabulary
(an argument, else the config's) and FPN (:mod:`.composition`), then Detectron2's heads on
``fpn.output_shape()``; their forward passes add the text to the heads and the pixel-text loss.

Model layout (parameter name prefixes):
    backbone.    CLIP image encoder (res2..res5, clip_dense, clip_global)
    text_side.   prompt_encoder (learnable context, CLIP text tower), context_decoder, gamma
    fpn.         Detectron2's FPN on the fused features
    proposal_generator. / roi_heads. / head.   Detectron2's heads (or the language-guided ones)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
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
from detectron2.structures import Instances

from .composition import build_denseclip_parts, denseclip_options, model_vocabulary
from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin
from .fused_fpn import build_detection_fpn, build_retinanet_fpn
from .heads import DenseCLIPRetinaNetHead, LanguageGuidedRetinaNetHead, uses_language_heads
from .vocabulary import heads_config
from .vocabulary_swap import check_vocabulary_head


@META_ARCH_REGISTRY.register()
class DenseCLIPRCNN(DenseCLIPMetaArchMixin, GeneralizedRCNN):
    """Mask R-CNN / Faster R-CNN on DenseCLIP features; ROI heads: DenseCLIPROIHeads."""

    vocabulary_head = "roi_heads"

    @classmethod
    def from_config(cls, cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None) -> Dict:
        vocabulary = model_vocabulary(cfg, vocabulary, "thing")
        parts = build_denseclip_parts(cfg, vocabulary, build_detection_fpn)
        heads_cfg = heads_config(cfg, "MODEL.ROI_HEADS.NUM_CLASSES", len(vocabulary))
        shapes = parts.fpn.output_shape()
        return {
            **parts._asdict(),
            "proposal_generator": build_proposal_generator(heads_cfg, shapes),
            "roi_heads": check_vocabulary_head(build_roi_heads(heads_cfg, shapes), "MODEL.ROI_HEADS.NAME", "DenseCLIPROIHeads"),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **denseclip_options(cfg),
        }

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

    vocabulary_head = "head"

    @classmethod
    def from_config(cls, cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None) -> Dict:
        # Detectron2's RetinaNet.from_config, on the FPN's shapes, with the language-guided head
        # (MODEL.DENSECLIP.HEAD "language") or Detectron2's (declaring its per-class tensors).
        vocabulary = model_vocabulary(cfg, vocabulary, "thing")
        parts = build_denseclip_parts(cfg, vocabulary, build_retinanet_fpn)
        heads_cfg = heads_config(cfg, "MODEL.RETINANET.NUM_CLASSES", len(vocabulary))
        r = cfg.MODEL.RETINANET
        shapes = parts.fpn.output_shape()
        feature_shapes = [shapes[f] for f in r.IN_FEATURES]
        head = LanguageGuidedRetinaNetHead if uses_language_heads(cfg) else DenseCLIPRetinaNetHead
        return {
            **parts._asdict(),
            "head": head(heads_cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": len(vocabulary),
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
            **denseclip_options(cfg),
        }

    def set_num_classes(self, num_classes: int) -> None:
        super().set_num_classes(num_classes)
        self.num_classes = num_classes

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
