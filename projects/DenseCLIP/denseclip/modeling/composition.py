"""How a DenseCLIP model is composed from a config and a vocabulary, as Mask2Former composes its
model in ``from_config``: the image encoder (MODEL.BACKBONE.NAME) and the text tower's CLIP model
(:func:`~.encoders.build_denseclip_encoders`), the text side for the vocabulary, and the FPN over the
image features + score maps; the meta-architectures then build their heads on ``fpn.output_shape()``.

Every read of MODEL.DENSECLIP.* that builds a part is here or in a ``from_config``."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import FPN, META_ARCH_REGISTRY, Backbone, build_model

from ..text import ContextDecoder, PromptTextEncoder
from ..text.prompt_templates import prompt_ensemble
from .encoders import build_denseclip_encoders
from .text_side import PROMPTING_MODES, DenseCLIPTextSide
from .vocabulary import VOCABULARY_META_ARCHITECTURES, vocabulary_from_config

__all__ = ["DenseCLIPParts", "build_denseclip_model", "build_denseclip_parts", "denseclip_options", "model_vocabulary"]

# Builds the FPN on the fused features' shapes (:mod:`.fused_fpn`).
FPNBuilder = Callable[[CfgNode, Dict[str, ShapeSpec]], FPN]


class DenseCLIPParts(NamedTuple):
    backbone: Backbone  # the image encoder
    text_side: DenseCLIPTextSide
    fpn: FPN


def model_vocabulary(cfg: CfgNode, vocabulary: Optional[Sequence[str]], kind: str) -> List[str]:
    """The vocabulary a model is built with: ``vocabulary`` when given, else the config's
    (:func:`~.vocabulary.vocabulary_from_config`: MODEL.DENSECLIP.CLASS_NAMES, else the ``kind``
    classes of DATASETS.TRAIN[0]'s metadata)."""
    return list(vocabulary) if vocabulary is not None else vocabulary_from_config(cfg, kind)


def prompting_mode(cfg: CfgNode) -> str:
    """MODEL.DENSECLIP.PROMPTING, checked; CONTEXT_DECODER.ENABLED False is the older spelling of
    "none" (and contradicts "pre")."""
    d = cfg.MODEL.DENSECLIP
    if d.PROMPTING not in PROMPTING_MODES:
        raise ValueError(f"MODEL.DENSECLIP.PROMPTING must be one of {PROMPTING_MODES}, got '{d.PROMPTING}'")
    if d.CONTEXT_DECODER.ENABLED:
        return d.PROMPTING
    if d.PROMPTING == "pre":
        raise ValueError(
            "MODEL.DENSECLIP.PROMPTING 'pre' needs its context decoder: MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED "
            "must be True (False means PROMPTING 'none')"
        )
    return "none"


def build_text_side(cfg: CfgNode, clip_model: torch.nn.Module, embed_dim: int, vocabulary: Sequence[str]) -> DenseCLIPTextSide:
    """Prompt encoder over ``clip_model``'s text tower, context decoder (post- or pre-model
    prompting, sized by MODEL.DENSECLIP.CONTEXT_DECODER) and score maps, for ``vocabulary``."""
    d = cfg.MODEL.DENSECLIP
    prompting = prompting_mode(cfg)
    prompt_encoder = PromptTextEncoder(
        clip_model,  # only its text tower is used
        prompt=d.PROMPT,
        n_context=d.N_CONTEXT if d.PROMPT == "learnable" else 0,
        template=d.TEMPLATE,
        templates=prompt_ensemble(d.PROMPT_ENSEMBLE) if d.PROMPT_ENSEMBLE else None,
        name_context_length=d.NAME_CONTEXT_LENGTH,
        context_length=d.TEXT_CONTEXT_LENGTH,
        # The one place that decides whether CLIP's text weights train.
        freeze_text_tower=cfg.SOLVER.TEXT_ENCODER_MULTIPLIER == 0,
        context_from_image=prompting == "pre",
    )
    decoder, queries = None, None
    if prompting != "none":
        c = d.CONTEXT_DECODER
        # "pre": the decoder's outputs are context tokens, of the text tower's token width.
        out_dim = prompt_encoder.width if prompting == "pre" else None
        decoder = ContextDecoder(embed_dim, width=c.WIDTH, heads=c.HEADS, layers=c.LAYERS, dropout=c.DROPOUT,
                                 out_dim=out_dim)
    if prompting == "pre":
        # N_CONTEXT queries in the visual embedding space (the decoder's input side, as the text
        # embeddings of "post"), initialised as the decoder's weights (the paper does not say).
        queries = torch.nn.init.trunc_normal_(torch.empty(d.N_CONTEXT, embed_dim), std=0.02)
    return DenseCLIPTextSide(
        prompt_encoder, decoder, vocabulary, embed_dim=embed_dim,
        tau=d.TAU, gamma_init=d.CONTEXT_DECODER.GAMMA_INIT, score_map_feature=d.SCORE_MAP_FEATURE,
        raw_score_map=d.FUSE_RAW_SCORES, prompting=prompting, context_queries=queries,
    )


def build_denseclip_parts(cfg: CfgNode, vocabulary: Sequence[str], fpn_builder: FPNBuilder,
                          strict_input_size: bool = True) -> DenseCLIPParts:
    """Image encoder and text tower, text side for ``vocabulary``, and the FPN ``fpn_builder`` builds
    on the fused features' shapes, in this order (the order of the random initialisations).
    ``strict_input_size`` False: a CLIP image encoder takes inputs of any size (the segmentors'
    unpadded test windows)."""
    backbone, clip_model = build_denseclip_encoders(cfg, strict_input_size=strict_input_size)
    text_side = build_text_side(cfg, clip_model, backbone.embed_dim, vocabulary)
    fpn = fpn_builder(cfg, text_side.fused_shapes(backbone.output_shape()))
    return DenseCLIPParts(backbone, text_side, fpn)


def denseclip_options(cfg: CfgNode) -> Dict[str, Any]:
    """The meta-architectures' own arguments (besides the parts and Detectron2's)."""
    return {
        "pixel_text_loss_weight": cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT,
        "return_score_maps": cfg.MODEL.DENSECLIP.RETURN_SCORE_MAPS,
    }


def build_denseclip_model(cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None) -> torch.nn.Module:
    """Detectron2's ``build_model`` with the vocabulary as an argument: a DenseCLIP meta-architecture
    is built for ``vocabulary`` (default: the config's, :func:`model_vocabulary`), any other one as
    ``build_model`` builds it (a vocabulary given for it is an error: its classes are NUM_CLASSES)."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in VOCABULARY_META_ARCHITECTURES:
        if vocabulary is not None:
            raise ValueError(f"MODEL.META_ARCHITECTURE '{name}' takes no vocabulary (only {', '.join(VOCABULARY_META_ARCHITECTURES)} do)")
        return build_model(cfg)
    model = META_ARCH_REGISTRY.get(name)(cfg, vocabulary=vocabulary)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
