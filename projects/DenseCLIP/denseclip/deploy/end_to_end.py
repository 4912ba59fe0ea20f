"""One graph per model, from pixels to final outputs: the ONNX export (``--format onnx``).

======================  ==================================================================================
model                   graph ``model.onnx``: inputs -> outputs
======================  ==================================================================================
RetinaNet               ``image`` uint8 H x W x 3 (RGB, any size) -> ``boxes`` N x 4 (x1, y1, x2, y2 in the
                        input's pixels), ``scores`` N, ``classes`` N (int64), ``score_map`` 1 x K x h x w
Mask / Faster R-CNN     as RetinaNet, plus (Mask R-CNN) ``mask_probs`` N x M x M: each detection's mask
                        probabilities in its box (M = 2 x POOLER_RESOLUTION), pasted by the runner
Semantic FPN            ``image`` float32 H x W x 3 (RGB pixel values 0-255, any size; one view) ->
                        ``sem_seg`` 1 x K x H x W logits
======================  ==================================================================================

Inside a detector's graph runs the model's own inference code, traced: normalisation and padding
to the size divisibility (Detectron2's ``ImageList``), CLIP image encoder, text side with the
vocabulary's text embeddings as a constant (:func:`.graphs.constant_text_side`; with pre-model
prompting, MODEL.DENSECLIP.PROMPTING "pre", the text depends on the image, so the graph holds the
context decoder over the queries and the frozen CLIP text tower over the vocabulary's tokens), FPN, heads,
anchors, top-k candidates (``TopK``), box decoding, class-wise NMS (``NonMaxSuppression``), for
R-CNN the RPN proposals, ``RoiAlign`` pooling and Fast R-CNN / mask inference; then boxes clipped to
the image and empty ones dropped (Detectron2's ``detector_postprocess`` at the input's own size).
Detectron2 writes these functions to be traced (shapes become tensors while tracing), so the ONNX
graph takes any image size. Left to the runner: the test-time resize (the same Pillow bilinear
resize as Detectron2's ``ResizeShortestEdge``, which an ONNX ``Resize`` does not reproduce), scaling
boxes back to the photo, and pasting masks (a per-detection loop in Detectron2).

A segmentation graph is the model's ``encode_decode`` on one unpadded view (the reference never
pads a view); whole-image inference is one call, sliding windows and multi-scale + flip are several
calls on windows and resized views (their number depends on the image size), composed by the runner
as the model composes them. Its input is float so that resized views need no rounding.
"""
from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from detectron2.structures import Instances
from torch import nn

from .graphs import IMAGE, SCORE_MAP, SEM_SEG, constant_text_side

BOXES, SCORES, CLASSES, MASK_PROBS = "boxes", "scores", "classes", "mask_probs"


def with_constant_text(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` whose text side holds the vocabulary's text embeddings as a
    constant (no CLIP text tower): the copy runs the model's own methods. Pre-model prompting has
    no such constant (its text depends on the image): the model itself, text tower included."""
    if model.text_side.prompting == "pre":
        return model
    copied = copy.copy(model)
    copied._modules = dict(model._modules)
    copied._modules["text_side"] = constant_text_side(model.text_side)
    return copied


class PixelsGraph(nn.Module):
    """Base: RGB pixels (H x W x 3) -> the model's input tensor (3 x H x W float in INPUT.FORMAT)."""

    def __init__(self, model: nn.Module, input_format: str):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT: an ONNX export takes RGB or BGR models, got '{input_format}'")
        self.model = with_constant_text(model)
        self.bgr = input_format == "BGR"

    @property
    def language_guided(self) -> bool:
        return bool(self.model.language_guided)

    def model_input(self, image: torch.Tensor) -> torch.Tensor:
        chw = image.permute(2, 0, 1).float()
        return chw.flip(0) if self.bgr else chw


def clip_to_image(instances: Instances) -> Instances:
    """Detectron2's ``detector_postprocess`` at the input's own size, without the mask paste:
    boxes clipped to the image, empty boxes dropped."""
    instances.pred_boxes.clip(instances.image_size)
    return instances[instances.pred_boxes.nonempty()]


class RetinaNetEndToEnd(PixelsGraph):
    """DenseCLIPRetinaNet's inference, pixels -> detections (see the module docstring)."""

    input_names = [IMAGE]
    output_names = [BOXES, SCORES, CLASSES, SCORE_MAP]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        m = self.model
        images = m.preprocess_image([{"image": self.model_input(image)}])
        dense = m.extract_features(images)
        features = [dense.features[f] for f in m.head_in_features]
        predictions = m.head(features, dense.text_embeddings) if self.language_guided else m.head(features)
        instances = clip_to_image(m.forward_inference(images, features, predictions)[0])
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, dense.score_map


class RCNNEndToEnd(PixelsGraph):
    """DenseCLIPRCNN's inference (RPN, ROI heads, masks), pixels -> detections and mask probabilities."""

    input_names = [IMAGE]

    def __init__(self, model: nn.Module, input_format: str):
        super().__init__(model, input_format)
        self.mask_on = bool(getattr(model.roi_heads, "mask_on", False))

    @property
    def output_names(self) -> List[str]:
        return [BOXES, SCORES, CLASSES] + ([MASK_PROBS] if self.mask_on else []) + [SCORE_MAP]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        m = self.model
        images = m.preprocess_image([{"image": self.model_input(image)}])
        dense = m.extract_features(images)
        proposals, _ = m.proposal_generator(images, dense.features, None)
        results, _ = m.roi_heads(images, dense.features, proposals, None, **m._head_text(dense))
        instances = clip_to_image(results[0])
        masks = (instances.pred_masks[:, 0],) if self.mask_on else ()
        return (instances.pred_boxes.tensor, instances.scores, instances.pred_classes, *masks, dense.score_map)


class SemanticSegmentationView(PixelsGraph):
    """DenseCLIPSemanticSegmentor's ``encode_decode`` on one view: float pixels -> logits at the
    view's size (no padding)."""

    input_names = [IMAGE]
    output_names = [SEM_SEG]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.encode_decode(((self.model_input(image) - m.pixel_mean) / m.pixel_std)[None])


def build_end_to_end_graph(model: nn.Module, arch: str, input_format: str) -> PixelsGraph:
    graph_type = {"DenseCLIPRetinaNet": RetinaNetEndToEnd, "DenseCLIPRCNN": RCNNEndToEnd,
                  "DenseCLIPSemanticSegmentor": SemanticSegmentationView}[arch]
    return graph_type(model, input_format).eval()
