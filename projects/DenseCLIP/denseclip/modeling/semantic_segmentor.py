"""Semantic segmentation meta-architectures: Detectron2's ``SemanticSegmentor`` on a CLIP image
encoder (the paper's CLIP baselines) and with DenseCLIP's text side (the paper's DenseCLIP models).

Both follow Detectron2's contract: ``batched_inputs`` of dicts with "image" (and "sem_seg" for
training); training returns a loss dict; inference returns one ``{"sem_seg": K x height x width}``
per input (logits; class probabilities averaged over the views with TEST.SEM_SEG multi-scale/flip),
so Detectron2's ``SemSegEvaluator`` and ``Visualizer.draw_sem_seg`` read them as usual. At test
time they also run the reference's sliding-window inference (TEST.SEM_SEG), one image at a time and
unpadded, whatever its size (the CLIP encoders, built for it by their segmentation builders, the
:class:`~denseclip.backbone.build.SemanticFPN` and the head resize by size where the reference does).

DenseCLIP model layout (parameter name prefixes), composed in ``from_config`` (:mod:`.composition`):
    backbone.      the image encoder, MODEL.BACKBONE.NAME (res2..res5, clip_dense, clip_global)
    text_side.     prompt_encoder (learnable context, CLIP text tower), context_decoder, gamma
    fpn.           Detectron2's FPN (P2-P5) on the image features + score maps
    sem_seg_head.  the Semantic FPN decoder (:mod:`.semantic_fpn_head`)
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from .composition import build_denseclip_parts, denseclip_options, model_vocabulary
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin
from .fused_fpn import build_semantic_fpn
from .semantic_fpn_head import semantic_cross_entropy
from .slide_inference import multi_scale_flip_probabilities, slide_inference
from .vocabulary import heads_config
from .vocabulary_swap import check_vocabulary_head

__all__ = ["CLIPSemanticSegmentor", "DenseCLIPSemanticSegmentor"]

logger = logging.getLogger(__name__)

TEST_MODES = ("whole", "slide")


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

    def decode_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The head's stride-4 logits of a batch of normalised images."""
        return self.sem_seg_head.layers(self.backbone(images))

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B x K x H x W) of a batch of normalised images of any size (not padded: the
        reference's windows), bilinearly resized from stride 4 to the input's size."""
        logits = self.decode_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of one normalised image batch (B x 3 x H x W) by TEST.SEM_SEG.MODE."""
        if self.test_mode == "slide":
            return slide_inference(self.encode_decode, image, self.num_classes, self.crop_size, self.stride)
        return self.encode_decode(image)

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
        # One image at a time, unpadded, as the reference tests (padding would change the border's logits).
        return [{"sem_seg": self._infer_one(image, x)} for image, x in zip(images, batched_inputs)]

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

    vocabulary_head = "sem_seg_head"

    @classmethod
    def from_config(cls, cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None) -> Dict:
        # The image encoder takes the reference's unpadded test windows, whatever their size.
        vocabulary = model_vocabulary(cfg, vocabulary, "stuff")
        parts = build_denseclip_parts(cfg, vocabulary, build_semantic_fpn, strict_input_size=False)
        heads_cfg = heads_config(cfg, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(vocabulary))
        return {
            **parts._asdict(),
            "sem_seg_head": check_vocabulary_head(build_sem_seg_head(heads_cfg, parts.fpn.output_shape()), "MODEL.SEM_SEG_HEAD.NAME",
                                                  "SemanticFPNHead or LanguageGuidedSemanticFPNHead"),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **_test_options(cfg),
            **denseclip_options(cfg),
        }

    def _head_text(self, dense: DenseCLIPFeatures) -> Optional[torch.Tensor]:
        return dense.text_embeddings if self.language_guided else None

    def decode_logits(self, images: torch.Tensor) -> torch.Tensor:
        dense = self.extract_features(ImageList(images, [tuple(images.shape[-2:])] * len(images)))
        return self.sem_seg_head.layers(dense.features, self._head_text(dense))

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]] | Dict[str, torch.Tensor]:
        """As ``CLIPSemanticSegmentor.forward``; at inference with ``return_score_maps`` each output
        also holds "score_maps" (K x height x width ``sigmoid(cosine / tau)``, the detectors' output):
        the pixel-text score maps of the whole test-resized image, by one more pass of the image
        encoder and text side (the segmentation itself may be assembled from windows or views)."""
        outputs = super().forward(batched_inputs)
        if self.training or not self.return_score_maps:
            return outputs
        for output, image, inputs in zip(outputs, self.normalized_images(batched_inputs), batched_inputs):
            images = ImageList(image[None], [tuple(image.shape[-2:])])
            text, score_map = self.text_side(self.backbone(images.tensor))
            self.add_score_maps([output], DenseCLIPFeatures({}, text, score_map), [inputs], images)
        return outputs

    def training_losses(self, images: ImageList, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        dense = self.extract_features(images)
        losses = self.sem_seg_head(dense.features, targets, self._head_text(dense))[1]
        if self.pixel_text_loss_weight > 0:
            head = self.sem_seg_head
            logits = self.text_side.score_logits(dense.score_map)
            loss = semantic_cross_entropy(logits, targets, head.ignore_value, head.loss_average)
            losses["loss_pixel_text"] = loss * self.pixel_text_loss_weight
        return losses

