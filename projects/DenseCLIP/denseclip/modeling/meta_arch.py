"""DenseCLIP meta-architectures: Detectron2's R-CNN and RetinaNet whose ``backbone`` is the CLIP
image encoder, with the DenseCLIP text side and an FPN over image features + score maps.

Model layout (parameter name prefixes):
    backbone.    CLIP image encoder (res2..res5, clip_dense, clip_global)
    text_side.   prompt_encoder (learnable context, CLIP text tower), context_decoder, gamma
    fpn.         Detectron2's FPN on the fused features
    proposal_generator. / roi_heads. / head.   Detectron2's heads (or the language-guided ones)
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    FPN,
    META_ARCH_REGISTRY,
    Backbone,
    GeneralizedRCNN,
    RetinaNet,
    build_anchor_generator,
    build_proposal_generator,
    build_roi_heads,
)
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import ImageList, Instances

from ..backbone.build import create_clip_from_config, wrap_clip_visual
from ..text import ContextDecoder, PromptTextEncoder
from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding
from .fused_fpn import FusedFeatures, build_fused_fpn
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, uses_language_heads
from .pixel_text import pixel_text_loss
from .text_side import DenseCLIPTextSide, VocabularySlice, reindex_vocabulary_slice
from .vocabulary import configured_vocabulary

logger = logging.getLogger(__name__)

# Parameter-name prefixes of the first layout (everything under one DenseCLIPBackbone), renamed
# when such a checkpoint is loaded.
_FIRST_LAYOUT_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("backbone.image_encoder.", "backbone."),
    ("backbone.text_encoder.", "text_side.prompt_encoder."),
    ("backbone.context_decoder.", "text_side.context_decoder."),
    ("backbone.gamma", "text_side.gamma"),
    ("backbone.fpn.", "fpn."),
)


def upgrade_state_dict_layout(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> bool:
    """Rename, in place, the keys of a checkpoint written with the first model layout; True if any."""
    renamed = False
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        local = key[len(prefix):]
        for old, new in _FIRST_LAYOUT_RENAMES:
            if local.startswith(old):
                state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                renamed = True
                break
    return renamed


class DenseCLIPParts(NamedTuple):
    backbone: Backbone
    text_side: DenseCLIPTextSide
    fpn: FPN


def build_denseclip_parts(cfg: CfgNode, retinanet: bool) -> DenseCLIPParts:
    """Image encoder, text side and fused FPN, from one open_clip model (both towers' weights)."""
    if cfg.MODEL.BACKBONE.NAME != "build_clip_backbone":
        raise ValueError(
            f"DenseCLIP's image encoder is a CLIP backbone: MODEL.BACKBONE.NAME must be 'build_clip_backbone', "
            f"got '{cfg.MODEL.BACKBONE.NAME}'"
        )
    if not cfg.MODEL.CLIP.WITH_ATTENTION_POOL:
        raise ValueError("DenseCLIP needs CLIP's dense embeddings: set MODEL.CLIP.WITH_ATTENTION_POOL True")
    d = cfg.MODEL.DENSECLIP
    clip_model = create_clip_from_config(cfg)
    backbone = wrap_clip_visual(cfg, clip_model.visual, with_attention_pool=True)
    prompt_encoder = PromptTextEncoder(
        clip_model,
        prompt=d.PROMPT,
        n_context=d.N_CONTEXT if d.PROMPT == "learnable" else 0,
        template=d.TEMPLATE,
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
        prompt_encoder, decoder, configured_vocabulary(cfg), embed_dim=backbone.embed_dim,
        tau=d.TAU, gamma_init=d.CONTEXT_DECODER.GAMMA_INIT, score_map_feature=d.SCORE_MAP_FEATURE,
    )
    fpn = build_fused_fpn(cfg, text_side.fused_shapes(backbone.output_shape()), retinanet)
    return DenseCLIPParts(backbone, text_side, fpn)


class DenseCLIPFeatures(NamedTuple):
    features: Dict[str, torch.Tensor]  # FPN levels
    text_embeddings: torch.Tensor  # B x K x D
    score_map: torch.Tensor  # B x K x h x w


class DenseCLIPMetaArchMixin:
    """What the DenseCLIP meta-architectures add to Detectron2's: the text side and the fused FPN,
    the auxiliary pixel-text loss, the vocabulary and its swap, and the recipe's parameter groups."""

    backbone: Backbone

    @configurable
    def __init__(self, *, text_side: DenseCLIPTextSide, fpn: FPN, pixel_text_loss_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.text_side = text_side
        self.fpn = fpn
        self.pixel_text_loss_weight = pixel_text_loss_weight
        # Tensors of the vocabulary the model was trained with, kept the first time the vocabulary
        # is swapped so that swapping back is exact.
        self._base_vocabulary: Optional[List[str]] = None
        self._base_tensors: Dict[str, torch.Tensor] = {}

    @property
    def class_names(self) -> List[str]:
        return self.text_side.vocabulary

    def extract_features(self, images: ImageList) -> DenseCLIPFeatures:
        image_features = self.backbone(images.tensor)
        text, score_map = self.text_side(image_features)
        return DenseCLIPFeatures(self.fpn(self.text_side.fuse(image_features, score_map)), text, score_map)

    def pixel_text_losses(self, dense: DenseCLIPFeatures, gt_instances: List[Instances], images: ImageList) -> Dict[str, torch.Tensor]:
        if self.pixel_text_loss_weight <= 0:
            return {}
        loss = pixel_text_loss(dense.score_map, gt_instances, images.tensor.shape[-2:])
        return {"loss_pixel_text": loss * self.pixel_text_loss_weight}

    # ------------------------------------------------------------------------------- parameters
    def parameter_groups(self) -> Dict[str, List[Tuple[str, nn.Parameter]]]:
        """Parameters by role in the recipe: the CLIP image encoder, CLIP's text tower, the learnable
        text prompt, and the rest (context decoder, gamma, FPN, heads)."""
        roles = {id(p): "image_encoder" for p in self.backbone.parameters()}
        roles.update({id(p): "text_tower" for p in self.text_side.prompt_encoder.clip_text.parameters()})
        if self.text_side.prompt_encoder.context is not None:
            roles[id(self.text_side.prompt_encoder.context)] = "text_prompt"
        groups: Dict[str, List[Tuple[str, nn.Parameter]]] = {k: [] for k in ("image_encoder", "text_tower", "text_prompt", "rest")}
        for name, param in self.named_parameters():
            groups[roles.get(id(param), "rest")].append((name, param))
        return groups

    # ------------------------------------------------------------------------------- vocabulary
    def vocabulary_dependent_parameters(self) -> Dict[str, VocabularySlice]:
        """Tensors holding one entry per class of the vocabulary, by name: the FPN convs that read the
        score-map channels (the lateral conv of the score-map feature and, for RetinaNet, P6 computed
        from it) and the stock heads' per-class outputs (:meth:`_head_vocabulary_parameters`)."""
        feature = self.text_side.score_map_feature
        shape = self.backbone.output_shape()[feature]
        fpn_slice = VocabularySlice(dim=1, prefix=shape.channels)
        names = {f"fpn.fpn_lateral{int(math.log2(shape.stride))}.weight": fpn_slice}
        if getattr(self.fpn.top_block, "in_feature", None) == feature:
            names["fpn.top_block.p6.weight"] = fpn_slice
        names.update(self._head_vocabulary_parameters())
        return names

    def set_vocabulary(self, class_names: List[str]) -> None:
        """Detect a new set of classes, given by name, without rebuilding or reloading the model.

        The text embeddings are recomputed (once). The tensors that read the score maps are
        re-indexed by name: a name of the training vocabulary keeps its learned weights, a new name
        gets the mean of the training vocabulary's weights (a class-agnostic response). Requires the
        language-guided heads (MODEL.DENSECLIP.HEAD "language"): stock heads have one learned weight
        vector per training class.
        """
        if not self.language_guided:
            raise RuntimeError(
                "Changing the vocabulary needs the language-guided heads (MODEL.DENSECLIP.HEAD 'language'); "
                "this model uses Detectron2's stock classifier with a fixed number of classes"
            )
        names = list(class_names)
        dependent = self.vocabulary_dependent_parameters()
        if self._base_vocabulary is None:
            self._base_vocabulary = self.text_side.vocabulary
            self._base_tensors = {n: self.get_parameter(n).detach().clone() for n in dependent}
        self.text_side.set_vocabulary(names)  # validates before anything changes
        for name, where in dependent.items():
            new = reindex_vocabulary_slice(self._base_tensors[name], where, self._base_vocabulary, names)
            self._replace_parameter(name, new)
        fused = self.fpn.bottom_up
        assert isinstance(fused, FusedFeatures)
        fused.set_shapes(self.text_side.fused_shapes(self.backbone.output_shape()))
        self._set_head_num_classes(len(names))
        logger.info("Vocabulary set to %d classes", len(names))

    def _replace_parameter(self, name: str, value: torch.Tensor) -> None:
        module_name, attr = name.rsplit(".", 1)
        module = self.get_submodule(module_name)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(value.to(old.device), requires_grad=old.requires_grad))
        if isinstance(module, nn.Conv2d) and attr == "weight":
            module.in_channels = value.shape[1]

    def adapt_checkpoint_vocabulary(self, state_dict: Dict[str, torch.Tensor], checkpoint_vocabulary: List[str],
                                    fresh_new_classes: bool = False) -> List[str]:
        """Re-index, in place, the vocabulary-dependent tensors of a checkpoint trained with
        ``checkpoint_vocabulary`` for this model's vocabulary, by name: a shared name keeps its
        trained entries (whatever its position), a new name gets the mean of the trained entries
        or, with ``fresh_new_classes`` (fine-tuning), this model's freshly initialised ones.
        Returns the names that are new to the checkpoint."""
        vocabulary = self.text_side.vocabulary
        if list(checkpoint_vocabulary) == vocabulary:
            return []
        current = self.state_dict()
        for name, where in self.vocabulary_dependent_parameters().items():
            if name in state_dict and where.num_classes(state_dict[name]) == len(checkpoint_vocabulary):
                fill = current[name] if fresh_new_classes else None
                state_dict[name] = reindex_vocabulary_slice(state_dict[name], where, checkpoint_vocabulary, vocabulary, fill)
        known = set(checkpoint_vocabulary)
        return [n for n in vocabulary if n not in known]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of the first layout load into this one (keys renamed, as PointRend does).
        if upgrade_state_dict_layout(state_dict, prefix):
            logger.info("Checkpoint of the first DenseCLIP layout: parameter names upgraded")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
