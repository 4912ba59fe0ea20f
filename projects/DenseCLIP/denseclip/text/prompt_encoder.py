"""Class-name prompts encoded by CLIP's frozen text transformer.

DenseCLIP turns every class name into a text embedding with CLIP's text tower. The reference learns
the prompt (CoOp style): a few context vectors are placed between the start-of-text token and the
class-name tokens, and only those vectors are trained while the text transformer stays frozen.
A fixed hand-written template ("a photo of a {}.") is offered as well; it is plain CLIP zero-shot
text encoding, and with several templates (a prompt ensemble, :mod:`.prompt_templates`) the mean of
their normalised embeddings per class.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .clip_text_tower import CLIPTextTower, clip_tokenizer

__all__ = ["PromptTextEncoder", "PromptTokens", "validate_vocabulary"]

logger = logging.getLogger(__name__)

PROMPT_MODES = ("learnable", "template")
# Prompts encoded at once when no gradient is needed (a 1203-class LVIS vocabulary under a prompt
# ensemble is ~24k prompts): bounds the peak memory of the one-off encoding.
_NO_GRAD_CHUNK = 4096


def shared_prefix_length(ids: torch.Tensor) -> int:
    """Number of leading tokens equal in every row of ``ids`` (K x L): SOT and the context
    placeholders of learnable prompts, SOT and a template's first words."""
    return int((ids == ids[:1]).all(dim=0).int().cumprod(dim=0).sum())


def validate_vocabulary(class_names: Sequence[str]) -> None:
    """Reject vocabularies that would give a meaningless classifier: empty, non-text, blank or
    duplicated names (duplicates compared as the tokenizer sees them: case and spacing ignored).
    The one vocabulary check of the project: the model, the predictor and the demo use it."""
    if isinstance(class_names, str):
        raise ValueError(f"the vocabulary must be a list of class names, got the string {class_names!r}")
    if len(class_names) == 0:
        raise ValueError(
            "vocabulary is empty: give class names (MODEL.DENSECLIP.CLASS_NAMES or the dataset's "
            "thing_classes)"
        )
    bad = [repr(name) for name in class_names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"class names must be non-blank strings; invalid: {', '.join(bad)}")
    counts = Counter(" ".join(name.lower().split()) for name in class_names)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(
            f"duplicate class names in the vocabulary (case and spacing ignored): {', '.join(duplicates)}"
        )


class PromptTextEncoder(nn.Module):
    """Text embeddings of a vocabulary of class names, from prompts through CLIP's frozen text tower.

    Args:
        clip_model: an open_clip ``CLIP`` model (e.g. ``open_clip.create_model("RN50")``). Its text
            modules are shared and frozen in place (their ``requires_grad`` is set to False).
        prompt: "learnable" (the reference): sequences [SOT, context x n_context, name tokens, EOT]
            with learnable context vectors; or "template": ``template.format(name)`` encoded as
            CLIP does for zero-shot classification, with no learnable context (n_context must be 0).
        n_context: number of learnable context vectors (MODEL.DENSECLIP.N_CONTEXT).
        template: text with one "{}" for the class name, used by prompt="template".
        templates: several such texts (a prompt ensemble) used by prompt="template" instead of
            ``template``: a class's embedding is the mean of its L2-normalised embeddings under
            each, normalised again (unit norm).
        name_context_length: tokens a class name may use in "learnable" mode, counting its SOT and
            EOT as the reference does (5 = SOT + 3 word tokens + EOT); longer names are truncated,
            with a warning naming what was kept; names identical once truncated are an error.
        context_length: total text length fed to the transformer (13 in the reference, at most the
            CLIP model's 77); the positional embedding is cut to this length.
        context_init_std: standard deviation of the context vectors' initialisation, a normal
            distribution truncated at two standard deviations. The reference calls
            ``nn.init.trunc_normal_`` with its defaults, i.e. std 1.0 (CoOp uses normal std 0.02).
        freeze_text_tower: keep CLIP's text weights fixed (``requires_grad`` False), as DenseCLIP
            does; the model builder sets it from SOLVER.TEXT_ENCODER_MULTIPLIER.
        context_from_image: the n_context context tokens come from each image at every call
            (:meth:`encode`'s ``image_context``: DenseCLIP's pre-model prompting) instead of being
            parameters of this module; needs prompt "learnable".

    Attributes:
        clip_text: the CLIP text tower (:class:`CLIPTextTower`); all CLIP text weights live here.
        context: the learnable context (n_context x width), or None in "template" mode.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        prompt: str = "learnable",
        n_context: int = 8,
        template: str = "a photo of a {}.",
        templates: Optional[Sequence[str]] = None,
        name_context_length: int = 5,
        context_length: int = 13,
        context_init_std: float = 1.0,
        freeze_text_tower: bool = True,
        context_from_image: bool = False,
    ) -> None:
        super().__init__()
        templates = tuple(templates) if templates else (template,)
        for text in templates:
            self._check_config(clip_model, prompt, n_context, text, name_context_length, context_length)
        if len(templates) > 1 and prompt != "template":
            raise ValueError(
                "a prompt ensemble (MODEL.DENSECLIP.PROMPT_ENSEMBLE) needs MODEL.DENSECLIP.PROMPT 'template': "
                "the learnable context replaces the templates' words"
            )
        if context_from_image and prompt != "learnable":
            raise ValueError(
                "MODEL.DENSECLIP.PROMPTING 'pre' puts the image's context tokens into learnable-prompt "
                f"slots: MODEL.DENSECLIP.PROMPT must be 'learnable', got '{prompt}'"
            )
        self.prompt = prompt
        self.n_context = n_context
        self.template = templates[0]
        self.templates = templates
        self.name_context_length = name_context_length
        self.context_length = context_length
        self.clip_text = CLIPTextTower(clip_model, context_length)
        self.clip_text.requires_grad_(not freeze_text_tower)
        if prompt == "learnable" and not context_from_image:
            self.context = nn.Parameter(torch.empty(n_context, self.clip_text.width))
            nn.init.trunc_normal_(self.context, std=context_init_std,
                                  a=-2 * context_init_std, b=2 * context_init_std)
        else:
            self.register_parameter("context", None)
        self._warned_truncations: Set[str] = set()

    @staticmethod
    def _check_config(
        clip_model: nn.Module,
        prompt: str,
        n_context: int,
        template: str,
        name_context_length: int,
        context_length: int,
    ) -> None:
        if prompt not in PROMPT_MODES:
            raise ValueError(f"MODEL.DENSECLIP.PROMPT must be one of {PROMPT_MODES}, got '{prompt}'")
        model_context_length = getattr(clip_model, "context_length", None)
        if model_context_length is not None and context_length > model_context_length:
            raise ValueError(
                f"MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH ({context_length}) exceeds the CLIP model's "
                f"context length ({model_context_length})"
            )
        if prompt == "template":
            if n_context != 0:
                raise ValueError(
                    "MODEL.DENSECLIP.PROMPT 'template' has no learnable context: set "
                    f"MODEL.DENSECLIP.N_CONTEXT to 0 (got {n_context})"
                )
            if context_length < 3:
                raise ValueError(
                    f"MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH ({context_length}) must leave room for SOT, "
                    "at least one text token and EOT (>= 3)"
                )
            try:
                formatted = template.format("x")
            except (IndexError, KeyError, ValueError) as e:
                raise ValueError(
                    f"MODEL.DENSECLIP.TEMPLATE '{template}' must be a format string with '{{}}' fields: {e}"
                ) from e
            if formatted == template:
                raise ValueError(f"MODEL.DENSECLIP.TEMPLATE '{template}' has no '{{}}' for the class name")
            return
        if n_context < 1:
            raise ValueError(
                f"MODEL.DENSECLIP.N_CONTEXT must be >= 1 for PROMPT 'learnable', got {n_context}"
            )
        if name_context_length < 3:
            raise ValueError(
                f"MODEL.DENSECLIP.NAME_CONTEXT_LENGTH ({name_context_length}) counts SOT and EOT and must "
                "leave room for at least one name token (>= 3)"
            )
        if n_context + name_context_length > context_length:
            raise ValueError(
                f"MODEL.DENSECLIP.N_CONTEXT ({n_context}) + MODEL.DENSECLIP.NAME_CONTEXT_LENGTH "
                f"({name_context_length}) must not exceed MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH "
                f"({context_length})"
            )

    @property
    def width(self) -> int:
        """Token embedding width of the text transformer (the size of each context vector)."""
        return self.clip_text.width

    @property
    def embed_dim(self) -> int:
        """Dimension D of the output text embeddings (CLIP's joint embedding dimension)."""
        return self.clip_text.embed_dim

    def tokenize(self, class_names: Sequence[str]) -> torch.LongTensor:
        """Token ids of the prompts, (K x T) x context_length (T templates per class, 1 unless a prompt
        ensemble; class-major rows), laid out exactly as the transformer sees them.

        "learnable": [SOT, 0 x n_context, name tokens, EOT, 0...]; the zeros are placeholders that
        ``forward`` replaces by the context vectors. "template": [SOT, template tokens, EOT, 0...],
        identical to ``open_clip.tokenize(texts, context_length)``. EOT has the largest id, so
        ``argmax`` of a row is its EOT position. Text that does not fit is truncated, EOT kept last,
        with one warning per class name naming what was kept; two names whose prompts are the same
        once truncated are an error naming both.
        """
        return self._tokenize(class_names)[0]

    def _tokenize(self, class_names: Sequence[str]) -> Tuple[torch.LongTensor, Dict[str, str]]:
        """:meth:`tokenize`'s ids and the truncated names, each with the text that was kept."""
        validate_vocabulary(class_names)
        tokenizer = clip_tokenizer()
        if self.prompt == "learnable":
            templates, max_text_tokens = ("{}",), self.name_context_length - 2
            budget = f"MODEL.DENSECLIP.NAME_CONTEXT_LENGTH {self.name_context_length}: {max_text_tokens} name tokens"
        else:
            templates, max_text_tokens = self.templates, self.context_length - 2
            budget = f"MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH {self.context_length}: {max_text_tokens} prompt tokens"
        ids = torch.zeros(len(class_names) * len(templates), self.context_length, dtype=torch.long)
        truncated: Dict[str, str] = {}
        seen: Dict[Tuple, str] = {}
        for k, name in enumerate(class_names):
            kept_rows: List[Tuple[int, ...]] = []
            for t, template in enumerate(templates):
                text = template.format(name)
                text_tokens = tokenizer.encode(text)
                if not text_tokens:
                    raise ValueError(f"class name {name!r} produces no tokens")
                if len(text_tokens) > max_text_tokens:
                    text_tokens = text_tokens[:max_text_tokens]
                    truncated.setdefault(name, tokenizer.decode(text_tokens).strip())
                    self._warn_truncation(name, text, truncated[name], budget)
                kept_rows.append(tuple(text_tokens))
                sequence = [tokenizer.sot_token_id, *[0] * self.n_context, *text_tokens, tokenizer.eot_token_id]
                ids[k * len(templates) + t, : len(sequence)] = torch.tensor(sequence)
            key = tuple(kept_rows)
            if key in seen:
                raise ValueError(
                    f"class names {seen[key]!r} and {name!r} are the same once cut to fit the model's text context "
                    f"({budget}: {tokenizer.decode(list(kept_rows[0])).strip()!r}); they would get identical scores. "
                    "Shorten or rename one of them"
                )
            seen[key] = name
        return ids, truncated

    def _warn_truncation(self, name: str, text: str, kept: str, budget: str) -> None:
        # Once per class name and encoder, not once per tokenization of a vocabulary.
        if name in self._warned_truncations:
            return
        self._warned_truncations.add(name)
        logger.warning("Class name %r does not fit the text context (%s): prompt %r cut to %r", name, budget, text, kept)

    def prompt_tokens(self, class_names: Sequence[str]) -> "PromptTokens":
        """:meth:`tokenize` plus what :meth:`encode` reads from the ids (EOT positions, shared
        prefix, templates per class) and the truncated names, computed once per vocabulary on the
        CPU: no host sync with the GPU per forward."""
        ids, truncated = self._tokenize(class_names)
        templates = len(self.templates) if self.prompt == "template" else 1
        return PromptTokens(ids, ids.argmax(dim=-1), shared_prefix_length(ids), templates, truncated)

    def encode(self, tokens: "PromptTokens", image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text embeddings (K x embed_dim; not normalised, except the unit-norm means of a prompt
        ensemble) of tokenized prompts. Gradients reach only ``context``; the text tower is frozen.

        With ``image_context`` (B x n_context x width, built with ``context_from_image``), every
        image's context tokens fill the context slots of every prompt: the text tower runs once on
        the B x K sequences, the shared SOT + context prefix once per image, and B x K x embed_dim
        embeddings are returned; gradients reach ``image_context``."""
        if image_context is None and not torch.is_grad_enabled() and tokens.ids.shape[0] > _NO_GRAD_CHUNK:
            step = _NO_GRAD_CHUNK - _NO_GRAD_CHUNK % tokens.templates_per_class
            return torch.cat([self.encode(chunk) for chunk in tokens.chunks(step)])
        ids = tokens.ids
        device = self.clip_text.token_embedding.weight.device
        embeddings = self.clip_text.token_embedding(ids.to(device, non_blocking=True))
        if image_context is not None:
            return self._encode_per_image(embeddings, tokens, image_context)
        if self.context is not None:
            context = self.context.to(embeddings.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
            embeddings = torch.cat([embeddings[:, :1], context, embeddings[:, 1 + self.n_context:]], dim=1)
        elif self.prompt == "learnable":
            raise ValueError("this prompt encoder takes its context from the image: pass image_context")
        text = self.clip_text(embeddings, tokens.eot_index, tokens.shared_prefix)
        if tokens.templates_per_class == 1:
            return text
        per_template = F.normalize(text, dim=-1).unflatten(0, (-1, tokens.templates_per_class))
        return F.normalize(per_template.mean(dim=1), dim=-1)

    def _encode_per_image(self, embeddings: torch.Tensor, tokens: "PromptTokens", image_context: torch.Tensor) -> torch.Tensor:
        if self.context is not None or image_context.dim() != 3 or image_context.shape[1:] != (self.n_context, self.width):
            raise ValueError(
                f"image_context must be B x {self.n_context} x {self.width} for an encoder built with "
                f"context_from_image, got {tuple(image_context.shape)}"
                + (" (this encoder has its own learnable context)" if self.context is not None else "")
            )
        batch, classes = image_context.shape[0], embeddings.shape[0]
        context = image_context.to(embeddings.dtype)[:, None].expand(-1, classes, -1, -1)
        start = embeddings[None, :, :1].expand(batch, -1, -1, -1)
        names = embeddings[None, :, 1 + self.n_context:].expand(batch, -1, -1, -1)
        sequences = torch.cat([start, context, names], dim=2).flatten(0, 1)  # (B x K) x L x width
        text = self.clip_text(sequences, tokens.eot_index.repeat(batch), tokens.shared_prefix, groups=batch)
        return text.view(batch, classes, -1)

    def forward(self, prompts: Union[Sequence[str], "PromptTokens"]) -> torch.Tensor:
        """Text embeddings, K x embed_dim, of class names (tokenized here) or of prompts tokenized
        beforehand (:meth:`prompt_tokens`: the text side tokenizes once per vocabulary)."""
        return self.encode(prompts if isinstance(prompts, PromptTokens) else self.prompt_tokens(prompts))


class PromptTokens(NamedTuple):
    """Tokenized prompts of a vocabulary: ids ((K x T) x L, CPU; T templates per class), EOT
    positions (K x T, CPU), the number of leading tokens shared by every row, T, and the class names
    that were cut to fit, each with the text kept."""

    ids: torch.Tensor
    eot_index: torch.Tensor
    shared_prefix: int
    templates_per_class: int = 1
    truncated: Dict[str, str] = {}

    def chunks(self, rows: int) -> List["PromptTokens"]:
        """The prompts in consecutive blocks of ``rows`` rows (a multiple of T: whole classes)."""
        return [
            PromptTokens(ids, self.eot_index[start:start + rows], shared_prefix_length(ids), self.templates_per_class)
            for start, ids in ((s, self.ids[s:s + rows]) for s in range(0, self.ids.shape[0], rows))
        ]
