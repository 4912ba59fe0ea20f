"""Which submodule of a detector plays which role: the one place where the benchmark knows the
models' attribute layout.

The timing breakdown, the FLOP breakdown, the parameter counts and the text-encoder call counter
all ask :func:`component_paths`; a change of the models' layout is a change of ``ROLE_PATHS``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch

# role -> candidate paths (dotted attributes of the meta-architecture); the first that exists wins.
ROLE_PATHS = {
    # DenseCLIP: the backbone is the CLIP encoder, beside the text side and the FPN; Detectron2 / CLIP
    # baselines: the FPN's bottom-up.
    "image_encoder": ("backbone.bottom_up", "backbone"),
    # CLIP's text tower: the module that runs when text embeddings are computed (the prompt encoder
    # around it is entered through a method, not its forward, so hooks on it would see nothing).
    "text_encoder": ("text_side.prompt_encoder.clip_text",),
    "context_decoder": ("text_side.context_decoder",),
    # Detectron2's FPN backbones are the FPN itself, with the encoder inside as its bottom_up.
    "fpn": ("fpn", "backbone"),
    "proposal_generator": ("proposal_generator",),
    "roi_heads": ("roi_heads",),
    "retinanet_head": ("head",),
    "sem_seg_head": ("sem_seg_head",),
}
# The parameters counted as the text encoder's: the tower and the learnable prompt context.
PROMPT_ENCODER_PATH = "text_side.prompt_encoder"
# The last ResNet stage, relative to the image encoder: CLIP's attention pool runs after it.
LAST_STAGE_PATHS = ("visual.layer4", "res5")


def get_submodule(root: torch.nn.Module, path: str) -> Optional[torch.nn.Module]:
    """The module at dotted ``path`` under ``root``, or None."""
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, torch.nn.Module):
            return None
    return module


def component_paths(model: torch.nn.Module) -> Dict[str, Optional[str]]:
    """role -> path of the submodule of ``model`` that plays it (None where the model has none).

    Roles: those of ``ROLE_PATHS``, plus ``last_stage`` (the encoder's last ResNet stage) and
    ``fpn_bottom_up`` (the FPN's input module: the encoder for Detectron2's FPN backbones).
    """
    def first(candidates) -> Optional[str]:
        return next((p for p in candidates if get_submodule(model, p) is not None), None)

    paths = {role: first(candidates) for role, candidates in ROLE_PATHS.items()}
    encoder, fpn = paths["image_encoder"], paths["fpn"]
    paths["last_stage"] = first(f"{encoder}.{p}" for p in LAST_STAGE_PATHS) if encoder else None
    paths["fpn_bottom_up"] = first([f"{fpn}.bottom_up"]) if fpn else None
    return paths


def encoder_inside_fpn(paths: Dict[str, Optional[str]]) -> bool:
    """Detectron2's FPN backbones run the image encoder inside the FPN module (as its bottom_up)."""
    return bool(paths["image_encoder"] and paths["fpn"] and paths["image_encoder"].startswith(paths["fpn"] + "."))


def text_encoder(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    path = component_paths(model)["text_encoder"]
    return get_submodule(model, path) if path else None


def count_parameters(model: torch.nn.Module) -> Dict[str, int]:
    """Total, trainable and text-encoder parameters (tower and prompt context), and the paper's count
    (without the frozen text encoder)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = get_submodule(model, PROMPT_ENCODER_PATH)
    text_total = sum(p.numel() for p in text.parameters()) if text is not None else 0
    text_frozen = sum(p.numel() for p in text.parameters() if not p.requires_grad) if text is not None else 0
    return {
        "total": total,
        "trainable": trainable,
        "text_encoder": text_total,
        "text_encoder_frozen": text_frozen,
        # The paper's table counts parameters without the frozen text encoder.
        "excluding_frozen_text_encoder": total - text_frozen,
    }


@contextlib.contextmanager
def count_text_encoder_calls(model: torch.nn.Module) -> Iterator[Optional[Dict[str, int]]]:
    """Counts calls of the text tower's ``forward`` (yields None when the model has none)."""
    encoder = text_encoder(model)
    if encoder is None:
        yield None
        return
    counter = {"calls": 0}
    original = encoder.forward

    def counting_forward(*a, **k):
        counter["calls"] += 1
        return original(*a, **k)

    encoder.forward = counting_forward  # instance attribute: nn.Module.__call__ dispatches to it
    try:
        yield counter
    finally:
        del encoder.forward


def is_semantic_segmentor(model: torch.nn.Module) -> bool:
    """A Detectron2 semantic segmentor (inputs and outputs "sem_seg") rather than a detector."""
    return get_submodule(model, "sem_seg_head") is not None


def model_num_classes(model: torch.nn.Module, cfg) -> int:
    """The vocabulary's size for DenseCLIP models (``class_names``), else the config's."""
    names = getattr(model, "class_names", None)
    if names is not None:
        return len(names)
    if is_semantic_segmentor(model):
        return cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        return cfg.MODEL.RETINANET.NUM_CLASSES
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES
