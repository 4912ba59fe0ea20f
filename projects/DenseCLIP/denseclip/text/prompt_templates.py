"""Prompt ensembles for zero-shot text embeddings (MODEL.DENSECLIP.PROMPT_ENSEMBLE).

A class's zero-shot embedding is the mean of its L2-normalised embeddings under several hand-written
templates, normalised again: the prompt ensembling of CLIP's zero-shot classifiers, which ViLD
(Gu et al. 2022, section 3) uses for open-vocabulary detection. One template ("a photo of a {}.")
fixes the embedding to one phrasing; averaging over phrasings of scene and object size, which
detection crops vary in, makes it less sensitive to any one of them.

The ensembles apply to prompts without learned context only (MODEL.DENSECLIP.PROMPT "template"):
the learnable context of DenseCLIP (CoOp) is itself a learned replacement for the template's words,
trained on the base classes, so writing templates around it would mix the two methods.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

__all__ = ["PROMPT_ENSEMBLES", "prompt_ensemble"]

# Templates of ViLD's ensemble: the "photo" and "scene" phrasings, each plain and with the three
# object sizes. Written here as the data they are; "{}" is the class name.
_VILD_PHRASINGS = (
    "a photo of a {size}{}.",
    "This is a photo of a {size}{}.",
    "There is a {size}{} in the scene.",
    "There is the {size}{} in the scene.",
    "a photo of a {size}{} in the scene.",
)
_VILD_SIZES = ("", "small ", "medium ", "large ")


def _vild_templates() -> Tuple[str, ...]:
    templates: List[str] = []
    for phrasing in _VILD_PHRASINGS:
        for size in _VILD_SIZES:
            template = phrasing.replace("{size}", size)
            if template not in templates:
                templates.append(template)
    return tuple(templates)


# Name -> templates. "vild": 20 templates (5 phrasings x {plain, small, medium, large}).
PROMPT_ENSEMBLES: Dict[str, Tuple[str, ...]] = {"vild": _vild_templates()}


def prompt_ensemble(name: str) -> Tuple[str, ...]:
    """The templates of the ensemble ``name`` (a key of :data:`PROMPT_ENSEMBLES`)."""
    if name not in PROMPT_ENSEMBLES:
        raise ValueError(
            f"MODEL.DENSECLIP.PROMPT_ENSEMBLE must be '' (one template: MODEL.DENSECLIP.TEMPLATE) or one of "
            f"{sorted(PROMPT_ENSEMBLES)}, got '{name}'"
        )
    return PROMPT_ENSEMBLES[name]
