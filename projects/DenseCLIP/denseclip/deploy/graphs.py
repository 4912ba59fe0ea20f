"""The exportable parts of a DenseCLIP model, as modules with tensor inputs and named tensor outputs:
the graphs of ``--format torch.export`` and ``torchscript`` (``--format onnx`` exports one graph
from pixels to outputs instead, :mod:`.end_to_end`).

What runs in an exported graph and what runs in the runner (:mod:`denseclip.deploy.runner`):

========================  ================================================  =============================
model                     graphs (exported, one file each)                  runner (Python, Detectron2)
========================  ================================================  =============================
RetinaNet                 ``model``: image -> CLIP encoder -> text side     resize, normalise, pad; anchors,
                          (constant text) -> FPN -> head logits + deltas    top-k candidates, box decoding,
                                                                            NMS, rescaling
Mask / Faster R-CNN       ``model``: image -> ... -> FPN levels, RPN         as above, plus RPN proposals
                          logits + deltas, refined text;                    (decode, top-k, NMS), ROIAlign
                          ``box_head``: pooled regions (+ text) -> class    (Detectron2's ROIPooler), box
                          logits + box deltas; ``mask_head``: pooled        inference, mask paste
                          regions -> mask logits
========================  ================================================  =============================

The graphs hold no data-dependent control flow: everything whose output size depends on the
scores (top-k, NMS, ROI level assignment) stays in the runner, written with the same Detectron2
functions the PyTorch model calls, so exported and eager detections agree to float precision.

The vocabulary's text embeddings (before the per-image context refinement) are computed once, when
the wrapper is built, and held as a buffer: the CLIP text tower and the tokenizer are not part of
any graph, and the graph's class count is fixed by the vocabulary it was exported with.
"""
from __future__ import annotations

import copy as _copy
from typing import Dict, List, Tuple

import torch
from torch import nn

IMAGE = "image"
TEXT = "text_embeddings"
SCORE_MAP = "score_map"
SEM_SEG = "sem_seg"


def constant_text_side(text_side: nn.Module) -> nn.Module:
    """A shallow copy of the model's text side (same context decoder, gamma, tau, score maps) whose
    vocabulary text embeddings are a buffer (``constant_text``) computed now, and without the
    prompt encoder: neither the CLIP text tower nor its weights end up in an export, and the copy's
    ``forward`` is the model's own."""
    with torch.no_grad():
        text = text_side.class_text_embeddings().detach().clone()
    copy = _copy.copy(text_side)
    copy._modules = {k: v for k, v in text_side._modules.items() if k != "prompt_encoder"}
    copy._buffers = dict(text_side._buffers)
    copy.register_buffer("constant_text", text)
    copy.class_text_embeddings = lambda: copy.constant_text  # instance attribute: shadows the method
    return copy


class DenseCLIPFeatureGraph(nn.Module):
    """Normalised, padded image (1 x 3 x H x W, H and W multiples of the size divisibility) -> FPN
    levels, refined text embeddings and pixel-text score maps (the model's ``extract_features``),
    with the vocabulary's text embeddings as a constant (:func:`constant_text_side`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.text_side = constant_text_side(model.text_side)
        self.fpn = model.fpn
        self.language_guided = bool(model.language_guided)

    @property
    def class_text(self) -> torch.Tensor:
        return self.text_side.constant_text

    def features(self, image: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        # DenseCLIPMetaArchMixin.extract_features, on a tensor rather than an ImageList.
        image_features = self.backbone(image)
        text, score_map = self.text_side(image_features)
        return self.fpn(self.text_side.fuse(image_features, score_map)), text, score_map


class RetinaNetGraph(DenseCLIPFeatureGraph):
    """``model`` graph of DenseCLIPRetinaNet: per-level class logits (1 x A*K x h x w) and box deltas
    (1 x A*4 x h x w), named ``logits_<level>`` and ``deltas_<level>``, and the score maps."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.head = model.head
        self.in_features = list(model.head_in_features)

    @property
    def output_names(self) -> List[str]:
        return [f"logits_{f}" for f in self.in_features] + [f"deltas_{f}" for f in self.in_features] + [SCORE_MAP]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features, text, score_map = self.features(image)
        levels = [features[f] for f in self.in_features]
        logits, deltas = self.head(levels, text) if self.language_guided else self.head(levels)
        return (*logits, *deltas, score_map)


class RCNNFeatureGraph(DenseCLIPFeatureGraph):
    """``model`` graph of DenseCLIPRCNN: the FPN levels the ROI heads read (named as the FPN names
    them), RPN objectness logits (1 x A x h x w) and deltas (1 x A*4 x h x w) per RPN level, the
    refined text embeddings (1 x K x D) and the score maps."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        rpn = model.proposal_generator
        self.rpn_head = rpn.rpn_head
        self.rpn_in_features = list(rpn.in_features)
        roi = model.roi_heads
        in_features = list(roi.box_in_features) + list(getattr(roi, "mask_in_features", []) or [])
        self.roi_in_features = list(dict.fromkeys(in_features))

    @property
    def output_names(self) -> List[str]:
        return (
            list(self.roi_in_features)
            + [f"objectness_{f}" for f in self.rpn_in_features]
            + [f"rpn_deltas_{f}" for f in self.rpn_in_features]
            + [TEXT, SCORE_MAP]
        )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features, text, score_map = self.features(image)
        objectness, deltas = self.rpn_head([features[f] for f in self.rpn_in_features])
        return (*[features[f] for f in self.roi_in_features], *objectness, *deltas, text, score_map)


class BoxHeadGraph(nn.Module):
    """``box_head`` graph: ROIAlign-pooled regions of one image (R x C x P x P) -> class logits
    (R x K+1, softmax in the runner) and box deltas (R x 4 or R x 4K)."""

    input_names = ["box_features"]
    output_names = ["class_logits", "box_deltas"]
    language_guided = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor

    def forward(self, box_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.box_predictor(self.box_head(box_features))


class LanguageBoxHeadGraph(BoxHeadGraph):
    """``box_head`` graph of the language-guided ROI heads: also takes the image's refined text
    embeddings (K x D), the classifier of its regions."""

    input_names = ["box_features", TEXT]
    language_guided = True

    def forward(self, box_features: torch.Tensor, text_embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.box_predictor(self.box_head(box_features), text_embeddings)


class MaskHeadGraph(nn.Module):
    """``mask_head`` graph: pooled regions (R x C x P x P) -> mask logits (R x M x 2P x 2P)."""

    input_names = ["mask_features"]
    output_names = ["mask_logits"]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.mask_head = model.roi_heads.mask_head

    def forward(self, mask_features: torch.Tensor) -> torch.Tensor:
        return self.mask_head.layers(mask_features)


class SemanticSegmentationGraph(DenseCLIPFeatureGraph):
    """``model`` graph of DenseCLIPSemanticSegmentor: class logits at the input's resolution
    (1 x K x H x W, the model's ``encode_decode``) and the score maps. Sliding windows, multi-scale
    and flip (TEST.SEM_SEG) call it once per view, in the runner."""

    output_names = [SEM_SEG, SCORE_MAP]

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.sem_seg_head = model.sem_seg_head

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features, text, score_map = self.features(image)
        logits, _ = self.sem_seg_head(features, None, text if self.language_guided else None)
        return logits, score_map
