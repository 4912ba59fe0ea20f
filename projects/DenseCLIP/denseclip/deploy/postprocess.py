"""The runner's post-processing: what surrounds the exported graphs, done with the Detectron2 (and
project) code the PyTorch model runs (anchors, RetinaNet's and the RPN's decoding, ROIAlign, Fast
R-CNN inference, mask inference; sliding windows, multi-scale + flip), configured from the exported
config. No network weights live here."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ..modeling.meta_arch import TopKRetinaNet
from ..modeling.slide_inference import multi_scale_flip_probabilities, slide_inference
from .runtime import GraphRunner


def fpn_shapes(cfg: CfgNode, names: List[str]) -> Dict[str, ShapeSpec]:
    """Shapes of Detectron2's FPN levels ``p<i>`` (stride 2**i, FPN.OUT_CHANNELS channels)."""
    return {n: ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, stride=2 ** int(n[1:])) for n in names}


class RetinaNetDecoding:
    """RetinaNet's inference after the head: anchors, top-k candidates per level (the configured
    CANDIDATE_SELECTION), box decoding, class-wise NMS, top detections. It is Detectron2's
    ``RetinaNet.forward_inference`` on a ``TopKRetinaNet`` whose backbone and head are placeholders
    (the exported graph has run them)."""

    def __init__(self, cfg: CfgNode, num_classes: int):
        r = cfg.MODEL.RETINANET
        shapes = fpn_shapes(cfg, list(r.IN_FEATURES))
        self.in_features = list(r.IN_FEATURES)
        self.detector = TopKRetinaNet(
            backbone=nn.Identity(),
            head=nn.Identity(),
            head_in_features=self.in_features,
            anchor_generator=build_anchor_generator(cfg, [shapes[f] for f in self.in_features]),
            box2box_transform=Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            anchor_matcher=Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
            num_classes=num_classes,
            test_score_thresh=r.SCORE_THRESH_TEST,
            test_topk_candidates=r.TOPK_CANDIDATES_TEST,
            test_nms_thresh=r.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            candidate_selection=r.CANDIDATE_SELECTION,
        ).eval()

    def __call__(self, images: ImageList, outputs: Dict[str, torch.Tensor]) -> List[Instances]:
        logits = [outputs[f"logits_{f}"] for f in self.in_features]
        deltas = [outputs[f"deltas_{f}"] for f in self.in_features]
        # The anchor generator reads only the levels' sizes, which the logits share.
        return self.detector.forward_inference(images, logits, [logits, deltas])


class RCNNDecoding:
    """Everything of R-CNN inference but the networks: RPN proposals from the graph's objectness
    and deltas (Detectron2's ``RPN.predict_proposals``), ROIAlign of the proposals
    (``ROIPooler``), the ``box_head`` graph, ``FastRCNNOutputLayers.inference`` (softmax, box
    decoding, per-class NMS), ROIAlign of the detections, the ``mask_head`` graph and
    ``mask_rcnn_inference``."""

    def __init__(self, cfg: CfgNode, num_classes: int, box_head: GraphRunner, mask_head: Optional[GraphRunner] = None):
        rpn_features = list(cfg.MODEL.RPN.IN_FEATURES)
        roi_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        shapes = fpn_shapes(cfg, list(dict.fromkeys(rpn_features + roi_features)))
        # Detectron2's RPN, without its head (the graph ran it).
        self.rpn = RPN(**{**RPN.from_config(cfg, shapes), "head": nn.Identity()}).eval()
        self.box_features = roi_features
        self.box_pooler = _pooler(cfg.MODEL.ROI_BOX_HEAD, [shapes[f] for f in roi_features])
        box = cfg.MODEL.ROI_BOX_HEAD
        self.box_predictor = FastRCNNOutputLayers(
            ShapeSpec(channels=1),  # its linear layers are not used: the box_head graph has them
            box2box_transform=Box2BoxTransform(weights=box.BBOX_REG_WEIGHTS),
            num_classes=num_classes,
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            cls_agnostic_bbox_reg=box.CLS_AGNOSTIC_BBOX_REG,
        ).eval()
        self.box_head = box_head
        self.mask_head = mask_head
        if mask_head is not None:
            self.mask_features = roi_features  # StandardROIHeads pools masks from ROI_HEADS.IN_FEATURES too
            self.mask_pooler = _pooler(cfg.MODEL.ROI_MASK_HEAD, [shapes[f] for f in self.mask_features])
            self.mask_classes = 1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else num_classes

    def proposals(self, images: ImageList, outputs: Dict[str, torch.Tensor]) -> List[Instances]:
        names = self.rpn.in_features
        levels = [outputs[f"objectness_{f}"] for f in names]
        anchors = self.rpn.anchor_generator(levels)  # reads the levels' sizes only
        box_dim = self.rpn.anchor_generator.box_dim
        # Detectron2's RPN.forward: (N, A, H, W) -> (N, H*W*A) and (N, A*B, H, W) -> (N, H*W*A, B).
        objectness = [x.permute(0, 2, 3, 1).flatten(1) for x in levels]
        deltas = [
            x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in (outputs[f"rpn_deltas_{f}"] for f in names)
        ]
        return self.rpn.predict_proposals(anchors, objectness, deltas, images.image_sizes)

    def __call__(self, images: ImageList, outputs: Dict[str, torch.Tensor]) -> List[Instances]:
        if len(images) != 1:
            raise ValueError(f"the exported R-CNN runs one image at a time, got a batch of {len(images)}")
        proposals = self.proposals(images, outputs)
        pooled = self.box_pooler([outputs[f] for f in self.box_features], [p.proposal_boxes for p in proposals])
        text = (outputs["text_embeddings"][0],) if "text_embeddings" in self.box_head.input_names else ()
        predicted = self.box_head(pooled, *text)
        instances, _ = self.box_predictor.inference((predicted["class_logits"], predicted["box_deltas"]), proposals)
        if self.mask_head is not None:
            self._predict_masks(outputs, instances)
        return instances

    def _predict_masks(self, outputs: Dict[str, torch.Tensor], instances: List[Instances]) -> None:
        pooled = self.mask_pooler([outputs[f] for f in self.mask_features], [x.pred_boxes for x in instances])
        if pooled.shape[0] == 0:  # no detection: Detectron2's empty prediction, no graph call
            size = 2 * self.mask_pooler.output_size[0]
            logits = pooled.new_zeros((0, self.mask_classes, size, size))
        else:
            logits = self.mask_head(pooled)["mask_logits"]
        mask_rcnn_inference(logits, instances)


def _pooler(head_cfg: CfgNode, shapes: List[ShapeSpec]) -> ROIPooler:
    """The ROIPooler StandardROIHeads builds for a box or mask head config."""
    return ROIPooler(
        output_size=head_cfg.POOLER_RESOLUTION,
        scales=tuple(1.0 / s.stride for s in shapes),
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        pooler_type=head_cfg.POOLER_TYPE,
    )


Decoder = Callable[[ImageList, Dict[str, torch.Tensor]], List[Instances]]


class SemanticSegmentationDecoding:
    """``CLIPSemanticSegmentor``'s inference around its ``encode_decode``, which the exported graph
    is: whole-image or sliding-window inference (TEST.SEM_SEG.MODE), multi-scale + flip
    probabilities (TEST.SEM_SEG.SCALES, FLIP), and Detectron2's ``sem_seg_postprocess`` to the
    original size. Views run unpadded, as in the model: the end-to-end graph (``pixels``) takes
    pixels of any size (RGB, H x W x 3); a "parts" graph takes normalised images whose sides are
    multiples of the size divisibility, so there each view is zero-padded and its padding's logits
    dropped (which changes the logits near the border: export to ONNX for exact parity)."""

    def __init__(self, cfg: CfgNode, graph: GraphRunner, num_classes: int, size_divisibility: int,
                 check_size: Callable[[torch.Tensor], None], pixels: bool = False):
        t = cfg.TEST.SEM_SEG
        self.mode, self.crop, self.stride = t.MODE, tuple(t.CROP_SIZE), tuple(t.STRIDE)
        self.scales, self.flip = tuple(t.SCALES), bool(t.FLIP)
        self.graph, self.num_classes, self.size_divisibility = graph, num_classes, size_divisibility
        self.check_size, self.pixels, self.bgr = check_size, pixels, cfg.INPUT.FORMAT == "BGR"

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        if self.pixels:  # 1 x 3 x h x w pixels in the model's format -> h x w x 3 RGB
            view = images[0].flip(0) if self.bgr else images[0]
            return self.graph(view.permute(1, 2, 0).contiguous())["sem_seg"]
        h, w = images.shape[-2:]
        padded = ImageList.from_tensors(list(images), self.size_divisibility).tensor
        self.check_size(padded)
        return self.graph(padded)["sem_seg"][:, :, :h, :w]

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        if self.mode == "slide":
            return slide_inference(self.segment, image, self.num_classes, self.crop, self.stride)
        return self.segment(image)

    def __call__(self, image: torch.Tensor, inputs: Dict) -> torch.Tensor:
        """K x height x width for one image (3 x h x w: pixels for the end-to-end graph, else
        normalised): logits for a single view, averaged class probabilities over several."""
        h, w = image.shape[-2:]
        size = (inputs.get("height", h), inputs.get("width", w))
        if self.scales == (1.0,) and not self.flip:
            return sem_seg_postprocess(self.infer(image[None])[0], (h, w), *size)
        return multi_scale_flip_probabilities(self.infer, image[None], size, self.scales, self.flip)[0]


class EndToEndDetections:
    """The runner around an end-to-end detector graph: the model's input (3 x h x w pixels in
    INPUT.FORMAT) as RGB uint8 pixels in, detections at the input's size out, then Detectron2's
    ``detector_postprocess`` (scale to the original size, clip, mask paste). A score threshold
    above the one the graph was exported with keeps the detections above it: the same detections
    as the model with that threshold (top-k, NMS and the detection limit only ever drop lower
    scores); a lower one needs another export."""

    def __init__(self, cfg: CfgNode, graph: GraphRunner, exported_threshold: float, threshold: float):
        if threshold < exported_threshold:
            raise ValueError(
                f"score threshold {threshold}: the ONNX graph keeps detections above {exported_threshold} (its export's "
                "config); export again with the lower threshold"
            )
        self.graph, self.bgr = graph, cfg.INPUT.FORMAT == "BGR"
        self.threshold = threshold if threshold > exported_threshold else None

    def __call__(self, image: torch.Tensor) -> Tuple[Instances, Dict[str, torch.Tensor]]:
        pixels = (image.flip(0) if self.bgr else image).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
        outputs = self.graph(pixels.contiguous())
        instances = Instances(tuple(image.shape[-2:]), pred_boxes=Boxes(outputs["boxes"]), scores=outputs["scores"],
                              pred_classes=outputs["classes"])
        if "mask_probs" in outputs:  # N x M x M -> Detectron2's N x 1 x M x M
            instances.pred_masks = outputs["mask_probs"][:, None]
        if self.threshold is not None:
            instances = instances[instances.scores > self.threshold]
        return instances, outputs
