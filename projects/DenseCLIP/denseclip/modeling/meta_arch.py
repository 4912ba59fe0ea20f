"""DenseCLIP meta-architectures: Detectron2's R-CNN and RetinaNet on a DenseCLIPBackbone, with the
auxiliary pixel-text loss and an inference-time vocabulary swap."""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess

from .dense_decoding import TopKCandidateDecoding
from .denseclip_backbone import SCORE_MAP, TEXT_EMBEDDINGS, DenseCLIPBackbone
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, uses_language_heads
from .pixel_text import pixel_text_loss
from .vocabulary import resolve_class_names

logger = logging.getLogger(__name__)


def _with_num_classes(cfg: CfgNode, num_classes: int) -> CfgNode:
    """The vocabulary decides the number of classes; a stale NUM_CLASSES in a YAML is overridden."""
    cfg = cfg.clone()
    cfg.defrost()
    for node in (cfg.MODEL.ROI_HEADS, cfg.MODEL.RETINANET):
        if node.NUM_CLASSES != num_classes:
            logger.info("NUM_CLASSES %d replaced by the vocabulary size %d", node.NUM_CLASSES, num_classes)
            node.NUM_CLASSES = num_classes
    return cfg


class DenseCLIPMetaArchMixin:
    """What the DenseCLIP meta-architectures add to Detectron2's: the vocabulary decides the number
    of classes, the auxiliary pixel-text loss, and the vocabulary swap."""

    backbone: DenseCLIPBackbone

    @configurable
    def __init__(self, *, pixel_text_loss_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.pixel_text_loss_weight = pixel_text_loss_weight
        self._check_backbone()

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        cfg = _with_num_classes(cfg, len(resolve_class_names(cfg)))
        ret = super().from_config(cfg)
        ret["pixel_text_loss_weight"] = cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT
        return cls._with_heads(cfg, ret)

    @classmethod
    def _with_heads(cls, cfg: CfgNode, ret: Dict) -> Dict:
        """Replace heads in the constructor arguments, given the config with the vocabulary's size."""
        return ret

    @property
    def class_names(self) -> List[str]:
        return list(self.backbone.class_names)

    def _check_backbone(self) -> None:
        if not isinstance(self.backbone, DenseCLIPBackbone):
            raise ValueError(
                f"{type(self).__name__} needs a DenseCLIP backbone (MODEL.BACKBONE.NAME "
                "build_denseclip_fpn_backbone or build_denseclip_retinanet_fpn_backbone)"
            )

    def _pixel_text_losses(self, features: Dict[str, torch.Tensor], gt_instances, image_size) -> Dict[str, torch.Tensor]:
        if self.pixel_text_loss_weight <= 0:
            return {}
        loss = pixel_text_loss(features[SCORE_MAP], gt_instances, image_size)
        return {"loss_pixel_text": loss * self.pixel_text_loss_weight}

    def set_vocabulary(self, class_names: List[str]) -> None:
        """Detect a new set of classes, given by name, without rebuilding or reloading the model.

        Requires the language-guided heads (MODEL.DENSECLIP.HEAD "language"): stock heads have
        one learned weight vector per training class.
        """
        if not self.language_guided:
            raise RuntimeError(
                "Changing the vocabulary needs the language-guided heads (MODEL.DENSECLIP.HEAD 'language'); "
                "this model uses Detectron2's stock classifier with a fixed number of classes"
            )
        self.backbone.set_vocabulary(class_names)
        self._set_head_num_classes(len(class_names))


@META_ARCH_REGISTRY.register()
class DenseCLIPRCNN(DenseCLIPMetaArchMixin, GeneralizedRCNN):
    """Mask R-CNN / Faster R-CNN with DenseCLIP's backbone; ROI heads: DenseCLIPROIHeads."""

    @property
    def language_guided(self) -> bool:
        return isinstance(self.roi_heads, DenseCLIPROIHeads) and self.roi_heads.language_guided

    def _set_head_num_classes(self, num_classes: int) -> None:
        self.roi_heads.set_num_classes(num_classes)

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        losses.update(self._pixel_text_losses(features, gt_instances, images.tensor.shape[-2:]))
        return losses


@META_ARCH_REGISTRY.register()
class TopKRetinaNet(TopKCandidateDecoding, RetinaNet):
    """Detectron2's RetinaNet with an exact, fast top-k candidate selection (same detections, same
    weights). DenseCLIPRetinaNet builds on it and the CLIP baselines use it, so that the two differ
    only in what DenseCLIP adds."""


@META_ARCH_REGISTRY.register()
class DenseCLIPRetinaNet(DenseCLIPMetaArchMixin, TopKRetinaNet):
    """RetinaNet with DenseCLIP's backbone and, by default, the language-guided head."""

    @classmethod
    def _with_heads(cls, cfg: CfgNode, ret: Dict) -> Dict:
        if uses_language_heads(cfg):
            shapes = ret["backbone"].output_shape()
            ret["head"] = LanguageGuidedRetinaNetHead(cfg, [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES])
        return ret

    @property
    def language_guided(self) -> bool:
        return isinstance(self.head, LanguageGuidedRetinaNetHead)

    def _set_head_num_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.num_classes = num_classes

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        head_features = [features[f] for f in self.head_in_features]
        if self.language_guided:
            predictions = self.head(head_features, features[TEXT_EMBEDDINGS])
        else:
            predictions = self.head(head_features)

        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            losses = self.forward_training(images, head_features, predictions, gt_instances)
            losses.update(self._pixel_text_losses(features, gt_instances, images.tensor.shape[-2:]))
            return losses

        results = self.forward_inference(images, head_features, predictions)
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
