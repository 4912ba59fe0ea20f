"""The authors' released checkpoints (raoyongming/DenseCLIP, mmdetection 2.17) in this project's
layout, and back.

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
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = [
    "ReferenceLayout",
    "ReferenceCheckpointError",
    "convert_reference_state_dict",
    "detect_reference_layout",
    "is_reference_checkpoint",
    "retinanet_anchor_permutation",
    "to_reference_state_dict",
]


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint that cannot be converted (unknown, missing or malformed tensors)."""


class ReferenceLayout(NamedTuple):
    detector: str  # "retinanet" or "mask_rcnn"
    denseclip: bool  # False: the CLIP baseline (no attention pool, no text side)


def is_reference_checkpoint(checkpoint: object) -> bool:
    """An mmcv checkpoint dict as the reference saves it: ``state_dict`` + ``meta``."""
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict) and "meta" in checkpoint


def detect_reference_layout(state_dict: Dict[str, torch.Tensor]) -> ReferenceLayout:
    if any(k.startswith("bbox_head.") for k in state_dict):
        detector = "retinanet"
    elif any(k.startswith("roi_head.") for k in state_dict):
        detector = "mask_rcnn"
    else:
        raise ReferenceCheckpointError(
            "not a DenseCLIP reference detector: no 'bbox_head.*' (RetinaNet) or 'roi_head.*' (Mask R-CNN) tensors"
        )
    return ReferenceLayout(detector, denseclip="gamma" in state_dict or any(k.startswith("text_encoder.") for k in state_dict))


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


# (reference pattern, our name template, transform) where the template uses the pattern's groups.
# ``{enc}`` is the image encoder's prefix and ``{fpn}`` the FPN's, which differ between the DenseCLIP
# models (backbone = the encoder) and the CLIP baselines (backbone = Detectron2's FPN).
_Rule = Tuple[str, str]


def _rules(layout: ReferenceLayout) -> List[_Rule]:
    num_levels = 3 if layout.detector == "retinanet" else 4
    rules: List[_Rule] = [
        (r"backbone\.(?P<rest>.+)", "{enc}{rest}"),
        (r"neck\.lateral_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "{fpn}fpn_lateral{i+first}.{p}"),
    ]
    rules += [(rf"neck\.fpn_convs\.(?P<i>[0-{num_levels - 1}])\.conv\.(?P<p>weight|bias)", "{fpn}fpn_output{i+first}.{p}")]
    if layout.detector == "retinanet":
        rules += [
            (rf"neck\.fpn_convs\.{num_levels}\.conv\.(?P<p>weight|bias)", "{fpn}top_block.p6.{p}"),
            (rf"neck\.fpn_convs\.{num_levels + 1}\.conv\.(?P<p>weight|bias)", "{fpn}top_block.p7.{p}"),
            (r"bbox_head\.cls_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "head.cls_subnet.{2i}.{p}"),
            (r"bbox_head\.reg_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "head.bbox_subnet.{2i}.{p}"),
            (r"bbox_head\.retina_cls\.(?P<p>weight|bias)", "head.cls_score.{p}"),
            (r"bbox_head\.retina_reg\.(?P<p>weight|bias)", "head.bbox_pred.{p}"),
        ]
    else:
        rules += [
            (r"rpn_head\.rpn_conv\.(?P<p>weight|bias)", "proposal_generator.rpn_head.conv.{p}"),
            (r"rpn_head\.rpn_cls\.(?P<p>weight|bias)", "proposal_generator.rpn_head.objectness_logits.{p}"),
            (r"rpn_head\.rpn_reg\.(?P<p>weight|bias)", "proposal_generator.rpn_head.anchor_deltas.{p}"),
            (r"roi_head\.bbox_head\.shared_fcs\.(?P<i>[01])\.(?P<p>weight|bias)", "roi_heads.box_head.fc{i+1}.{p}"),
            (r"roi_head\.bbox_head\.fc_cls\.(?P<p>weight|bias)", "roi_heads.box_predictor.cls_score.{p}"),
            (r"roi_head\.bbox_head\.fc_reg\.(?P<p>weight|bias)", "roi_heads.box_predictor.bbox_pred.{p}"),
            (r"roi_head\.mask_head\.convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)", "roi_heads.mask_head.mask_fcn{i+1}.{p}"),
            (r"roi_head\.mask_head\.upsample\.(?P<p>weight|bias)", "roi_heads.mask_head.deconv.{p}"),
            (r"roi_head\.mask_head\.conv_logits\.(?P<p>weight|bias)", "roi_heads.mask_head.predictor.{p}"),
        ]
    if layout.denseclip:
        rules += [
            (r"contexts", "text_side.prompt_encoder.context"),
            (r"gamma", "text_side.gamma"),
            (r"text_encoder\.(?P<rest>.+)", "text_side.prompt_encoder.clip_text.{rest}"),
            (r"context_decoder\.(?P<rest>.+)", "text_side.context_decoder.{rest}"),
        ]
    return rules


def _prefixes(layout: ReferenceLayout) -> Dict[str, str]:
    if layout.denseclip:
        return {"enc": "backbone.visual.", "fpn": "fpn."}
    return {"enc": "backbone.bottom_up.visual.", "fpn": "backbone."}


def _fill(template: str, groups: Dict[str, str], layout: ReferenceLayout) -> str:
    first = 3 if layout.detector == "retinanet" else 2
    values = dict(_prefixes(layout), **groups)

    def field(m: "re.Match[str]") -> str:
        expr = m.group(1)
        if expr == "i+first":
            return str(int(values["i"]) + first)
        if expr == "i+1":
            return str(int(values["i"]) + 1)
        if expr == "2i":
            return str(2 * int(values["i"]))
        return values[expr]

    return re.sub(r"\{([^}]+)\}", field, template)


def _tensor_transform(our_name: str, layout: ReferenceLayout, perm: Sequence[int]) -> Optional[Callable[[torch.Tensor, str], torch.Tensor]]:
    if layout.detector == "retinanet" and our_name.startswith(("head.cls_score.", "head.bbox_pred.")):
        return lambda t, name: _permute_anchor_blocks(t, perm, name)
    if our_name == "text_side.prompt_encoder.context":
        def squeeze(t: torch.Tensor, name: str) -> torch.Tensor:
            if t.dim() != 3 or t.shape[0] != 1:
                raise ReferenceCheckpointError(f"{name}: expected 1 x n_context x width, got {tuple(t.shape)}")
            return t[0]
        return squeeze
    return None


def _required(layout: ReferenceLayout) -> List[str]:
    """Reference names every checkpoint of this layout has (a missing one is reported by name)."""
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
    rules = [(re.compile(pattern), template) for pattern, template in _rules(layout)]
    converted: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for name, tensor in state_dict.items():
        match = next(((m, template) for regex, template in rules if (m := regex.fullmatch(name))), None)
        if match is None:
            unknown.append(name)
            continue
        ours = _fill(match[1], match[0].groupdict(), layout)
        transform = _tensor_transform(ours, layout, perm)
        converted[ours] = transform(tensor, name) if transform else tensor
    if unknown:
        raise ReferenceCheckpointError(
            f"reference {layout.detector} checkpoint has {len(unknown)} tensor(s) this converter does not know: "
            f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}"
        )
    return converted


def to_reference_state_dict(
    state_dict: Dict[str, torch.Tensor], layout: ReferenceLayout, num_scales: int = 3, num_ratios: int = 3
) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`convert_reference_state_dict`: a model state dict of this project (a
    paper config) in the reference's names and tensor layouts."""
    inverse = _inverse(retinanet_anchor_permutation(num_scales, num_ratios))
    out: Dict[str, torch.Tensor] = {}
    ours_to_ref = _our_name_patterns(layout)
    for name, tensor in state_dict.items():
        for our_regex, make_ref in ours_to_ref:
            m = our_regex.fullmatch(name)
            if m:
                ref_name = make_ref(m)
                if layout.detector == "retinanet" and name.startswith(("head.cls_score.", "head.bbox_pred.")):
                    tensor = _permute_anchor_blocks(tensor, inverse, name)
                if name == "text_side.prompt_encoder.context":
                    tensor = tensor.unsqueeze(0)
                out[ref_name] = tensor
                break
        else:
            raise ReferenceCheckpointError(f"'{name}' has no counterpart in the reference {layout.detector} layout")
    return out


def _our_name_patterns(layout: ReferenceLayout) -> List[Tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]]:
    """Regexes over our names, each with the function that writes the reference name."""
    p = _prefixes(layout)
    first = 3 if layout.detector == "retinanet" else 2
    enc, fpn = re.escape(p["enc"]), re.escape(p["fpn"])
    pats: List[Tuple[str, Callable[["re.Match[str]"], str]]] = [
        (rf"{enc}(?P<rest>.+)", lambda m: f"backbone.{m['rest']}"),
        (rf"{fpn}fpn_lateral(?P<i>\d)\.(?P<p>weight|bias)", lambda m: f"neck.lateral_convs.{int(m['i']) - first}.conv.{m['p']}"),
        (rf"{fpn}fpn_output(?P<i>\d)\.(?P<p>weight|bias)", lambda m: f"neck.fpn_convs.{int(m['i']) - first}.conv.{m['p']}"),
    ]
    if layout.detector == "retinanet":
        pats += [
            (rf"{fpn}top_block\.p6\.(?P<p>weight|bias)", lambda m: f"neck.fpn_convs.3.conv.{m['p']}"),
            (rf"{fpn}top_block\.p7\.(?P<p>weight|bias)", lambda m: f"neck.fpn_convs.4.conv.{m['p']}"),
            (r"head\.cls_subnet\.(?P<i>\d+)\.(?P<p>weight|bias)", lambda m: f"bbox_head.cls_convs.{int(m['i']) // 2}.conv.{m['p']}"),
            (r"head\.bbox_subnet\.(?P<i>\d+)\.(?P<p>weight|bias)", lambda m: f"bbox_head.reg_convs.{int(m['i']) // 2}.conv.{m['p']}"),
            (r"head\.cls_score\.(?P<p>weight|bias)", lambda m: f"bbox_head.retina_cls.{m['p']}"),
            (r"head\.bbox_pred\.(?P<p>weight|bias)", lambda m: f"bbox_head.retina_reg.{m['p']}"),
        ]
    else:
        pats += [
            (r"proposal_generator\.rpn_head\.conv\.(?P<p>weight|bias)", lambda m: f"rpn_head.rpn_conv.{m['p']}"),
            (r"proposal_generator\.rpn_head\.objectness_logits\.(?P<p>weight|bias)", lambda m: f"rpn_head.rpn_cls.{m['p']}"),
            (r"proposal_generator\.rpn_head\.anchor_deltas\.(?P<p>weight|bias)", lambda m: f"rpn_head.rpn_reg.{m['p']}"),
            (r"roi_heads\.box_head\.fc(?P<i>[12])\.(?P<p>weight|bias)",
             lambda m: f"roi_head.bbox_head.shared_fcs.{int(m['i']) - 1}.{m['p']}"),
            (r"roi_heads\.box_predictor\.cls_score\.(?P<p>weight|bias)", lambda m: f"roi_head.bbox_head.fc_cls.{m['p']}"),
            (r"roi_heads\.box_predictor\.bbox_pred\.(?P<p>weight|bias)", lambda m: f"roi_head.bbox_head.fc_reg.{m['p']}"),
            (r"roi_heads\.mask_head\.mask_fcn(?P<i>\d)\.(?P<p>weight|bias)",
             lambda m: f"roi_head.mask_head.convs.{int(m['i']) - 1}.conv.{m['p']}"),
            (r"roi_heads\.mask_head\.deconv\.(?P<p>weight|bias)", lambda m: f"roi_head.mask_head.upsample.{m['p']}"),
            (r"roi_heads\.mask_head\.predictor\.(?P<p>weight|bias)", lambda m: f"roi_head.mask_head.conv_logits.{m['p']}"),
        ]
    if layout.denseclip:
        pats += [
            (r"text_side\.prompt_encoder\.context", lambda m: "contexts"),
            (r"text_side\.gamma", lambda m: "gamma"),
            (r"text_side\.prompt_encoder\.clip_text\.(?P<rest>.+)", lambda m: f"text_encoder.{m['rest']}"),
            (r"text_side\.context_decoder\.(?P<rest>.+)", lambda m: f"context_decoder.{m['rest']}"),
        ]
    return [(re.compile(pattern), make) for pattern, make in pats]
