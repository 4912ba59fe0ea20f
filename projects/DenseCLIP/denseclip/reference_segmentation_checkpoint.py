"""Name correspondences of the authors' segmentation checkpoints (raoyongming/DenseCLIP,
segmentation/, mmseg 0.19) with this project's Semantic FPN models; :mod:`.reference_checkpoint`
applies them (both ways) like the detectors' tables.

A reference segmentation checkpoint is ``{"meta": {"CLASSES", "PALETTE", ...}, "state_dict": {...},
"optimizer": ...}`` of the ``DenseCLIP`` segmentor (backbone, text_encoder, context_decoder, neck,
decode_head, contexts, gamma; the identity head has no parameters) or of an mmseg ``EncoderDecoder``
(the CLIP baselines: backbone, neck, decode_head). Every tensor is renamed only:

* backbone: the CLIP ResNet / ViT under ``backbone.visual`` (DenseCLIP) or ``backbone.bottom_up.visual``
  (baselines, whose ``backbone`` is Detectron2's FPN); the ViT's ``fpn1..fpn4`` are the pyramid levels
  ``res2..res5`` (same module indices).
* neck: mmseg's FPN ``lateral_convs.i.conv`` / ``fpn_convs.i.conv`` are Detectron2's ``fpn_lateral{i+2}`` /
  ``fpn_output{i+2}`` (levels at strides 4..32).
* decode_head: ``scale_heads.L.j`` (mmcv ConvModule: ``conv`` + ``bn``) is ``sem_seg_head.p{L+2}.j``
  (Detectron2's Conv2d, its norm as ``norm``; the upsampling modules sit at the same indices in both),
  ``conv_seg`` the ``predictor``.
"""
from __future__ import annotations

from typing import List, Tuple

__all__ = ["SEMANTIC_FPN", "segmentation_required", "segmentation_rules"]

SEMANTIC_FPN = "semantic_fpn"

# (reference template, our template, index pattern, scale, offset): see reference_checkpoint._Rule.
RuleSpec = Tuple[str, str, str, int, int]
_ANY = r"\d+"


def segmentation_rules(denseclip: bool, vit: bool) -> List[RuleSpec]:
    """The correspondences of a reference segmentation checkpoint, most specific first."""
    parent, fpn = ("backbone.", "fpn.") if denseclip else ("backbone.bottom_up.", "backbone.")
    rules: List[RuleSpec] = []
    if vit:
        rules += [(f"backbone.fpn{k}.{{rest}}", f"{parent}pyramid.res{k + 1}.{{rest}}", _ANY, 1, 0) for k in range(1, 5)]
    rules += [
        ("backbone.{rest}", parent + "visual.{rest}", _ANY, 1, 0),
        ("neck.lateral_convs.{i}.conv.{p}", fpn + "fpn_lateral{j}.{p}", "[0-3]", 1, 2),
        ("neck.fpn_convs.{i}.conv.{p}", fpn + "fpn_output{j}.{p}", "[0-3]", 1, 2),
        ("decode_head.conv_seg.{p}", "sem_seg_head.predictor.{p}", _ANY, 1, 0),
    ]
    for level in range(4):
        rules += [
            (f"decode_head.scale_heads.{level}.{{i}}.conv.weight", f"sem_seg_head.p{level + 2}.{{j}}.weight", _ANY, 1, 0),
            (f"decode_head.scale_heads.{level}.{{i}}.bn.{{rest}}", f"sem_seg_head.p{level + 2}.{{j}}.norm.{{rest}}", _ANY, 1, 0),
        ]
    return rules


def segmentation_required(denseclip: bool, vit: bool) -> List[str]:
    """Reference names every segmentation checkpoint of this kind has."""
    names = ["backbone.conv1.weight", "neck.lateral_convs.0.conv.weight", "decode_head.conv_seg.weight",
             "decode_head.scale_heads.3.4.conv.weight"]
    if vit:
        names += ["backbone.positional_embedding", "backbone.fpn1.1.weight"]
    if denseclip:
        names += ["contexts", "gamma", "text_encoder.token_embedding.weight", "context_decoder.out_proj.1.weight"]
        if not vit:
            names.append("backbone.attnpool.positional_embedding")
    return names
