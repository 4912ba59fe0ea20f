"""The authors' released checkpoints (raoyongming/DenseCLIP, mmdetection 2.17; and its segmentation
models, mmseg 0.19: :mod:`.reference_segmentation_checkpoint`) in this project's layout, and back.

A reference checkpoint is ``{"state_dict": {...}, "meta": {"CLASSES": (...), "mmdet_version": ...}}``
for one of the paper's detectors (RetinaNet or Mask R-CNN, DenseCLIP or its CLIP baseline). The
conversion is a renaming except for two tensors that change:

* RetinaNet's classification and box outputs are grouped by anchor, and the two libraries order the
  anchors of a location differently: mmdetection's ``AnchorGenerator`` puts the aspect ratio outer
  and the scale inner (anchor ``r * S + s``), Detectron2's ``DefaultAnchorGenerator`` the size
  outer and the ratio inner (anchor ``s * R + r``). The anchor boxes are the same (ratio = h / w,
  centres at ``i * stride``, no rounding), so the output channels are permuted by anchor block.
  The RPN has one scale: its order is the same.
* The learnable contexts are ``1 x n x width`` there, ``n x width`` here.

Everything else carries over as is: the background class is the last of 81 in both Fast R-CNN
classifiers; class-specific box deltas are class-major, 4 per class, in both; mmdetection's box coder
with stds (0.1, 0.1, 0.2, 0.2) / (1, 1, 1, 1) is Detectron2's ``Box2BoxTransform`` with weights
(10, 10, 5, 5) / (1, 1, 1, 1). Every tensor of the checkpoint must be consumed: an unknown or
missing name is an error that names it (shapes are checked against the model when loading).
"""
from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

from .reference_segmentation_checkpoint import SEMANTIC_FPN, segmentation_required, segmentation_rules

__all__ = [
    "ReferenceLayout",
    "ReferenceCheckpointError",
    "convert_reference_state_dict",
    "detect_reference_layout",
    "is_reference_checkpoint",
    "reference_names",
    "retinanet_anchor_permutation",
    "to_reference_state_dict",
]


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint that cannot be converted (unknown, missing or malformed tensors)."""


class ReferenceLayout(NamedTuple):
    detector: str  # "retinanet", "mask_rcnn" or "semantic_fpn" (the segmentation models)
    denseclip: bool  # False: the CLIP baseline (no attention pool, no text side)
    vit: bool = False  # a CLIP ViT image encoder (segmentation models)


def is_reference_checkpoint(checkpoint: object) -> bool:
    """An mmcv checkpoint dict as the reference saves it: ``state_dict`` + ``meta``."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict) and "meta" in checkpoint


def detect_reference_layout(state_dict: Dict[str, torch.Tensor]) -> ReferenceLayout:
    if any(k.startswith("bbox_head.") for k in state_dict):
        detector = "retinanet"
    elif any(k.startswith("roi_head.") for k in state_dict):
        detector = "mask_rcnn"
    elif any(k.startswith("decode_head.") for k in state_dict):
        detector = SEMANTIC_FPN
    else:
        raise ReferenceCheckpointError(
            "not a DenseCLIP reference model: no 'bbox_head.*' (RetinaNet), 'roi_head.*' (Mask R-CNN) or "
            "'decode_head.*' (Semantic FPN) tensors"
        )
    denseclip = "gamma" in state_dict or any(k.startswith("text_encoder.") for k in state_dict)
    return ReferenceLayout(detector, denseclip, vit="backbone.class_embedding" in state_dict)


def retinanet_anchor_permutation(num_scales: int = 3, num_ratios: int = 3) -> List[int]:
    """``perm[j]``: the mmdetection anchor of a location that is Detectron2's anchor ``j``."""
    return [r * num_scales + s for s in range(num_scales) for r in range(num_ratios)]


def _permute_anchor_blocks(tensor: torch.Tensor, perm: Sequence[int], name: str) -> torch.Tensor:
    """Reorder the output channels (dim 0) of a per-anchor conv, ``len(perm)`` blocks."""
    if tensor.shape[0] % len(perm):
        raise ReferenceCheckpointError(
            f"{name}: {tensor.shape[0]} output channels are not {len(perm)} anchor blocks"
        )
    return tensor.reshape(len(perm), -1, *tensor.shape[1:])[list(perm)].reshape(tensor.shape)


def _inverse(perm: Sequence[int]) -> List[int]:
    inverse = [0] * len(perm)
    for j, i in enumerate(perm):
        inverse[i] = j
    return inverse


class _Rule(NamedTuple):
    """One correspondence of names, read both ways. ``ref`` and ``ours`` are templates: ``{p}`` is
    weight or bias, ``{rest}`` any suffix, ``{i}`` (reference side) an index matching ``index``,
    and ``{j}`` (our side) the index ``scale * i + offset``."""

    ref: str
    ours: str
    index: str = r"\d+"
    scale: int = 1
    offset: int = 0


_FIELD_PATTERNS = {"p": r"weight|bias", "rest": r".+", "j": r"\d+"}


def _rules(layout: ReferenceLayout) -> List[_Rule]:
    """The name correspondences of a layout, most specific first. The image encoder and the FPN
    live under ``backbone.visual.`` / ``fpn.`` in the DenseCLIP models, and under
    ``backbone.bottom_up.visual.`` / ``backbone.`` (Detectron2's FPN backbone) in the CLIP baselines."""
    if layout.detector == SEMANTIC_FPN:
        rules = [_Rule(*spec) for spec in segmentation_rules(layout.denseclip, layout.vit)]
        return rules + (_text_side_rules() if layout.denseclip else [])
    retinanet = layout.detector == "retinanet"
    first, levels = (3, 3) if retinanet else (2, 4)
    enc, fpn = ("backbone.visual.", "fpn.") if layout.denseclip else ("backbone.bottom_up.visual.", "backbone.")
    rules = [
        _Rule("backbone.{rest}", enc + "{rest}"),
        _Rule("neck.lateral_convs.{i}.conv.{p}", fpn + "fpn_lateral{j}.{p}", offset=first),
        _Rule("neck.fpn_convs.{i}.conv.{p}", fpn + "fpn_output{j}.{p}", index=f"[0-{levels - 1}]", offset=first),
    ]
    if retinanet:
        rules += [
            _Rule(f"neck.fpn_convs.{levels}.conv.{{p}}", fpn + "top_block.p6.{p}"),
            _Rule(f"neck.fpn_convs.{levels + 1}.conv.{{p}}", fpn + "top_block.p7.{p}"),
            # Detectron2's conv towers interleave the ReLUs: conv k is module 2k.
            _Rule("bbox_head.cls_convs.{i}.conv.{p}", "head.cls_subnet.{j}.{p}", scale=2),
            _Rule("bbox_head.reg_convs.{i}.conv.{p}", "head.bbox_subnet.{j}.{p}", scale=2),
            _Rule("bbox_head.retina_cls.{p}", "head.cls_score.{p}"),
            _Rule("bbox_head.retina_reg.{p}", "head.bbox_pred.{p}"),
        ]
    else:
        rules += [
            _Rule("rpn_head.rpn_conv.{p}", "proposal_generator.rpn_head.conv.{p}"),
            _Rule("rpn_head.rpn_cls.{p}", "proposal_generator.rpn_head.objectness_logits.{p}"),
            _Rule("rpn_head.rpn_reg.{p}", "proposal_generator.rpn_head.anchor_deltas.{p}"),
            _Rule("roi_head.bbox_head.shared_fcs.{i}.{p}", "roi_heads.box_head.fc{j}.{p}", index="[01]", offset=1),
            _Rule("roi_head.bbox_head.fc_cls.{p}", "roi_heads.box_predictor.cls_score.{p}"),
            _Rule("roi_head.bbox_head.fc_reg.{p}", "roi_heads.box_predictor.bbox_pred.{p}"),
            _Rule("roi_head.mask_head.convs.{i}.conv.{p}", "roi_heads.mask_head.mask_fcn{j}.{p}", offset=1),
            _Rule("roi_head.mask_head.upsample.{p}", "roi_heads.mask_head.deconv.{p}"),
            _Rule("roi_head.mask_head.conv_logits.{p}", "roi_heads.mask_head.predictor.{p}"),
        ]
    return rules + (_text_side_rules() if layout.denseclip else [])


def _text_side_rules() -> List[_Rule]:
    return [
        _Rule("contexts", "text_side.prompt_encoder.context"),
        _Rule("gamma", "text_side.gamma"),
        _Rule("text_encoder.{rest}", "text_side.prompt_encoder.clip_text.{rest}"),
        _Rule("context_decoder.{rest}", "text_side.context_decoder.{rest}"),
    ]


def _template_regex(template: str, index: str) -> "re.Pattern[str]":
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    regex = "".join(
        re.escape(part) if k % 2 == 0 else f"(?P<{part}>{index if part == 'i' else _FIELD_PATTERNS[part]})"
        for k, part in enumerate(parts)
    )
    return re.compile(regex)


class _NameMap:
    """The rules of a layout, compiled once, translating names in either direction."""

    def __init__(self, layout: ReferenceLayout) -> None:
        self.rules = [(rule, _template_regex(rule.ref, rule.index), _template_regex(rule.ours, rule.index))
                      for rule in _rules(layout)]

    def to_ours(self, ref_name: str) -> Optional[str]:
        for rule, ref_regex, _ in self.rules:
            m = ref_regex.fullmatch(ref_name)
            if m:
                fields = m.groupdict()
                if "i" in fields:
                    fields["j"] = str(rule.scale * int(fields["i"]) + rule.offset)
                return rule.ours.format(**fields)
        return None

    def to_reference(self, our_name: str) -> Optional[str]:
        for rule, _, our_regex in self.rules:
            m = our_regex.fullmatch(our_name)
            if not m:
                continue
            fields = m.groupdict()
            if "j" in fields:
                i, remainder = divmod(int(fields["j"]) - rule.offset, rule.scale)
                if remainder or i < 0 or not re.fullmatch(rule.index, str(i)):
                    continue
                fields["i"] = str(i)
            return rule.ref.format(**fields)
        return None


def _to_our_tensor(tensor: torch.Tensor, our_name: str, ref_name: str, layout: ReferenceLayout,
                   perm: Sequence[int]) -> torch.Tensor:
    if layout.detector == "retinanet" and our_name.startswith(("head.cls_score.", "head.bbox_pred.")):
        return _permute_anchor_blocks(tensor, perm, ref_name)
    if our_name == "text_side.prompt_encoder.context":
        if tensor.dim() != 3 or tensor.shape[0] != 1:
            raise ReferenceCheckpointError(f"{ref_name}: expected 1 x n_context x width, got {tuple(tensor.shape)}")
        return tensor[0]
    return tensor


def _to_reference_tensor(tensor: torch.Tensor, our_name: str, layout: ReferenceLayout, perm: Sequence[int]) -> torch.Tensor:
    if layout.detector == "retinanet" and our_name.startswith(("head.cls_score.", "head.bbox_pred.")):
        return _permute_anchor_blocks(tensor, _inverse(perm), our_name)
    if our_name == "text_side.prompt_encoder.context":
        return tensor.unsqueeze(0)
    return tensor


def _required(layout: ReferenceLayout) -> List[str]:
    """Reference names every checkpoint of this layout has (a missing one is reported by name)."""
    if layout.detector == SEMANTIC_FPN:
        return segmentation_required(layout.denseclip, layout.vit)
    names = ["backbone.conv1.weight", "neck.lateral_convs.0.conv.weight"]
    if layout.detector == "retinanet":
        names += ["bbox_head.retina_cls.weight", "bbox_head.retina_reg.weight", "neck.fpn_convs.4.conv.weight"]
    else:
        names += ["rpn_head.rpn_cls.weight", "roi_head.bbox_head.fc_cls.weight", "roi_head.mask_head.conv_logits.weight"]
    if layout.denseclip:
        names += ["contexts", "gamma", "backbone.attnpool.positional_embedding", "text_encoder.token_embedding.weight",
                  "context_decoder.out_proj.1.weight"]
    return names


def convert_reference_state_dict(
    state_dict: Dict[str, torch.Tensor], num_scales: int = 3, num_ratios: int = 3
) -> Dict[str, torch.Tensor]:
    """This project's state dict for a reference ``state_dict`` (see the module docstring).

    ``num_scales`` x ``num_ratios``: RetinaNet anchors per location (3 x 3 in the reference).
    """
    layout = detect_reference_layout(state_dict)
    missing = [k for k in _required(layout) if k not in state_dict]
    if missing:
        raise ReferenceCheckpointError(f"reference {layout.detector} checkpoint lacks tensor(s): {', '.join(missing)}")
    perm = retinanet_anchor_permutation(num_scales, num_ratios)
    names = _NameMap(layout)
    converted: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for name, tensor in state_dict.items():
        ours = names.to_ours(name)
        if ours is None:
            unknown.append(name)
            continue
        converted[ours] = _to_our_tensor(tensor, ours, name, layout, perm)
    if unknown:
        raise ReferenceCheckpointError(
            f"reference {layout.detector} checkpoint has {len(unknown)} tensor(s) this converter does not know: "
            f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}"
        )
    return converted


def reference_names(our_names: Sequence[str], layout: ReferenceLayout) -> Dict[str, str]:
    """The reference name of each of ``our_names`` that has one in ``layout`` (the others are
    parts of our models that the authors' checkpoints do not hold)."""
    names = _NameMap(layout)
    found = {name: names.to_reference(name) for name in our_names}
    return {ours: ref for ours, ref in found.items() if ref is not None}


def to_reference_state_dict(
    state_dict: Dict[str, torch.Tensor], layout: ReferenceLayout, num_scales: int = 3, num_ratios: int = 3
) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`convert_reference_state_dict`: a model state dict of this project (a
    paper config) in the reference's names and tensor layouts."""
    perm = retinanet_anchor_permutation(num_scales, num_ratios)
    names = _NameMap(layout)
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        ref_name = names.to_reference(name)
        if ref_name is None:
            raise ReferenceCheckpointError(f"'{name}' has no counterpart in the reference {layout.detector} layout")
        out[ref_name] = _to_reference_tensor(tensor, name, layout, perm)
    return out
