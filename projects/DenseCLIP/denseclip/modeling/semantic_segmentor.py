"""Semantic segmentation meta-architectures: Detectron2's ``SemanticSegmentor`` on a CLIP image
encoder (the paper's CLIP baselines) and with DenseCLIP's text side (the paper's DenseCLIP models).

Both follow Detectron2's contract: ``batched_inputs`` of dicts with "image" (and "sem_seg" for
training); training returns a loss dict; inference returns one ``{"sem_seg": K x height x width}``
per input (logits; class probabilities averaged over the views with TEST.SEM_SEG multi-scale/flip),
so Detectron2's ``SemSegEvaluator`` and ``Visualizer.draw_sem_seg`` read them as usual. At test
time they also run the reference's sliding-window inference (TEST.SEM_SEG).

DenseCLIP model layout (parameter name prefixes):
    backbone.      CLIP image encoder (res2..res5, clip_dense, clip_global)
    text_side.     prompt_encoder (learnable context, CLIP text tower), context_decoder, gamma
    fpn.           Detectron2's FPN (P2-P5) on the image features + score maps
    sem_seg_head.  the Semantic FPN decoder (:mod:`.semantic_fpn_head`)
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..backbone.build import semantic_fpn_on
from ..text import validate_vocabulary
from .denseclip_mixin import DenseCLIPMetaArchMixin, build_denseclip_parts
from .fused_fpn import FusedFeatures
from .semantic_fpn_head import LanguageGuidedSemanticFPNHead, semantic_cross_entropy
from .slide_inference import multi_scale_flip_probabilities, slide_inference
from .text_side import VocabularySlice

__all__ = ["CLIPSemanticSegmentor", "DenseCLIPSemanticSegmentor", "semantic_vocabulary"]

logger = logging.getLogger(__name__)

TEST_MODES = ("whole", "slide")


def semantic_vocabulary(cfg: CfgNode) -> List[str]:
    """MODEL.DENSECLIP.CLASS_NAMES, or the ``stuff_classes`` of DATASETS.TRAIN[0] (DATASETS.TEST[0]
    for evaluation-only configs), or the class names recorded in MODEL.WEIGHTS (a checkpoint of this
    project, or the authors' meta CLASSES)."""
    names = list(cfg.MODEL.DENSECLIP.CLASS_NAMES)
    for dataset in [] if names else list(cfg.DATASETS.TRAIN)[:1] or list(cfg.DATASETS.TEST)[:1]:
        names = list(MetadataCatalog.get(dataset).get("stuff_classes", None) or [])
    if not names and cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS):
        # Imported here: the engine package imports the modeling package.
        from ..engine.checkpoint import checkpoint_vocabulary

        names = checkpoint_vocabulary(cfg.MODEL.WEIGHTS) or []
    if not names:
        raise ValueError(
            "Cannot determine the class names of the segmentation model: set MODEL.DENSECLIP.CLASS_NAMES, or "
            f"register DATASETS.TRAIN[0] ({list(cfg.DATASETS.TRAIN)[:1]}) with metadata stuff_classes"
        )
    validate_vocabulary(names)
    return names


def _test_options(cfg: CfgNode) -> Dict:
    t = cfg.TEST.SEM_SEG
    if t.MODE not in TEST_MODES:
        raise ValueError(f"TEST.SEM_SEG.MODE: expected one of {TEST_MODES}, got '{t.MODE}'")
    return {"test_mode": t.MODE, "crop_size": tuple(t.CROP_SIZE), "stride": tuple(t.STRIDE),
            "test_scales": tuple(t.SCALES), "test_flip": t.FLIP}


@META_ARCH_REGISTRY.register()
class CLIPSemanticSegmentor(SemanticSegmentor):
    """Detectron2's ``SemanticSegmentor`` with the reference's test strategies: whole-image or
    sliding-window inference, optionally over several scales and flips (TEST.SEM_SEG)."""

    @configurable
    def __init__(self, *, test_mode: str = "whole", crop_size: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
                 test_scales: Sequence[float] = (1.0,), test_flip: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.test_mode = test_mode
        self.crop_size = tuple(crop_size)
        self.stride = tuple(stride)
        self.test_scales = tuple(test_scales)
        self.test_flip = test_flip

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return {**super().from_config(cfg), **_test_options(cfg)}

    @property
    def num_classes(self) -> int:
        return self.sem_seg_head.num_classes

    # ------------------------------------------------------------------------------- computation
    def normalized_images(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        return [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B x K x H x W) of a batch of normalised images whose sides are multiples of the
        backbone's size divisibility."""
        return self.sem_seg_head(self.backbone(images))[0]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B x K x h x w) of normalised images of any size h x w: zero-padded at the bottom and
        right to the backbone's size divisibility (as Detectron2 pads every input), the padding's
        logits dropped."""
        h, w = images.shape[-2:]
        padded = ImageList.from_tensors(list(images), self.backbone.size_divisibility).tensor
        return self.encode_decode(padded)[:, :, :h, :w]

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of one normalised image batch (B x 3 x H x W) by TEST.SEM_SEG.MODE."""
        if self.test_mode == "slide":
            return slide_inference(self.segment, image, self.num_classes, self.crop_size, self.stride)
        return self.segment(image)

    def training_losses(self, images: ImageList, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.sem_seg_head(self.backbone(images.tensor), targets)[1]

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]] | Dict[str, torch.Tensor]:
        images = self.normalized_images(batched_inputs)
        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("Training a semantic segmentor needs 'sem_seg' label maps in its inputs")
            batch = ImageList.from_tensors(images, self.backbone.size_divisibility)
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs], self.backbone.size_divisibility,
                self.sem_seg_head.ignore_value,
            ).tensor
            return self.training_losses(batch, targets)
        if self.test_mode == "whole" and self.test_scales == (1.0,) and not self.test_flip:
            # Detectron2's batched path: one padded batch, logits cropped per image.
            batch = ImageList.from_tensors(images, self.backbone.size_divisibility)
            results = self.encode_decode(batch.tensor)
            sizes = batch.image_sizes
        else:
            results, sizes = [self._infer_one(image, x) for image, x in zip(images, batched_inputs)], None
        outputs = []
        for i, (result, x) in enumerate(zip(results, batched_inputs)):
            if sizes is not None:
                result = sem_seg_postprocess(result, sizes[i], x.get("height", sizes[i][0]), x.get("width", sizes[i][1]))
            outputs.append({"sem_seg": result})
        return outputs

    def _infer_one(self, image: torch.Tensor, inputs: Dict) -> torch.Tensor:
        """K x height x width for one image: logits (single view), or averaged class probabilities."""
        h, w = image.shape[-2:]
        size = (inputs.get("height", h), inputs.get("width", w))
        if self.test_scales == (1.0,) and not self.test_flip:
            return sem_seg_postprocess(self.infer(image[None])[0], (h, w), *size)
        return multi_scale_flip_probabilities(self.infer, image[None], size, self.test_scales, self.test_flip)[0]


@META_ARCH_REGISTRY.register()
class DenseCLIPSemanticSegmentor(DenseCLIPMetaArchMixin, CLIPSemanticSegmentor):
    """DenseCLIP's Semantic FPN (the paper's segmentation models): CLIP image encoder, context-aware
    text embeddings, pixel-text score maps concatenated to MODEL.DENSECLIP.SCORE_MAP_FEATURE (raw
    cosine with MODEL.DENSECLIP.FUSE_RAW_SCORES), FPN P2-P5, Semantic FPN decoder, and the auxiliary
    pixel-text loss: cross-entropy of cosine / tau against the label map (the reference's identity
    head), weighted by MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        names = semantic_vocabulary(cfg)
        parts = build_denseclip_parts(cfg, retinanet=False, vocabulary=names,
                                      fpn_builder=lambda c, shapes: semantic_fpn_on(c, FusedFeatures(shapes)))
        head_cfg = cfg
        if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES != len(names):
            logger.info("MODEL.SEM_SEG_HEAD.NUM_CLASSES: %d, the size of the vocabulary (config: %d)",
                        len(names), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
            head_cfg = cfg.clone()
            head_cfg.defrost()
            head_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(names)
        return {
            **parts._asdict(),
            "sem_seg_head": build_sem_seg_head(head_cfg, parts.fpn.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pixel_text_loss_weight": cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT,
            **_test_options(cfg),
        }

    @property
    def language_guided(self) -> bool:
        return isinstance(self.sem_seg_head, LanguageGuidedSemanticFPNHead)

    def _set_head_num_classes(self, num_classes: int) -> None:
        self.sem_seg_head.set_num_classes(num_classes)

    def _head_vocabulary_parameters(self) -> Dict[str, VocabularySlice]:
        if self.language_guided:  # the classifier is the text: nothing per class
            return {}
        return {f"sem_seg_head.predictor.{p}": VocabularySlice(dim=0) for p in ("weight", "bias")}

    def _decode(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None):
        dense = self.extract_features(ImageList(images, [tuple(images.shape[-2:])] * len(images)))
        text = dense.text_embeddings if self.language_guided else None
        return dense, self.sem_seg_head(dense.features, targets, text)

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        return self._decode(images)[1][0]

    def training_losses(self, images: ImageList, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        dense, (_, losses) = self._decode(images.tensor, targets)
        if self.pixel_text_loss_weight > 0:
            head = self.sem_seg_head
            logits = self.text_side.score_logits(dense.score_map)
            loss = semantic_cross_entropy(logits, targets, head.ignore_value, head.loss_average)
            losses["loss_pixel_text"] = loss * self.pixel_text_loss_weight
        return losses

