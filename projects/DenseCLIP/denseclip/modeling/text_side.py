"""DenseCLIP's text side: the vocabulary, its prompt text embeddings, their context-aware
refinement and the pixel-text score maps.

The meta-architecture owns one :class:`DenseCLIPTextSide`. It reads the image encoder's declared
CLIP embeddings (``clip_global``, ``clip_dense``), returns the per-image text embeddings and score
maps explicitly, and says how the score maps join the FPN's input.
"""
from __future__ import annotations

import logging
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import ShapeSpec

from ..backbone import CLIP_DENSE, CLIP_GLOBAL
from ..text import ContextDecoder, PromptTextEncoder
from ..text.prompt_encoder import PromptTokens
from .pixel_text import pixel_text_score_map

logger = logging.getLogger(__name__)


class TextSideOutput(NamedTuple):
    text_embeddings: torch.Tensor  # B x K x D, refined with each image's context
    # B x K x H/s x W/s (s: stride of clip_dense): cosine / tau, or the raw cosine with raw_score_map
    score_map: torch.Tensor


PROMPTING_MODES = ("post", "pre", "none")


class DenseCLIPTextSide(nn.Module):
    """Vocabulary -> text embeddings -> context-refined text -> pixel-text score maps.

    The image context enters the text in one of the paper's two ways (section 3.3), or not at all
    (``prompting``, MODEL.DENSECLIP.PROMPTING):

    - "post" (the paper's models): the K text embeddings, computed once per vocabulary, attend to
      the image's tokens [global, dense...] through ``context_decoder``; ``text + gamma * update``.
    - "pre": ``context_queries`` (N x D) attend to the image's tokens through ``context_decoder``
      (outputs of the text tower's token width); its N outputs are the context tokens of every
      class's prompt, so the frozen text tower runs per image, on B x K sequences, in one pass.
    - "none": the learnable context only; no context decoder.

    Args:
        prompt_encoder: class names to K x D text embeddings (learnable context + frozen CLIP text;
            for "pre", built with ``context_from_image``).
        context_decoder: the transformer decoder over the image's tokens; None for "none".
        vocabulary: the class names.
        embed_dim: D, CLIP's joint embedding dimension (size of ``gamma``).
        tau: fixed temperature of the score maps.
        gamma_init: initial residual scale of the decoder's update (small: text starts as CLIP's).
        score_map_feature: the image feature the score maps are concatenated to (res5).
        raw_score_map: the score maps are the cosine similarities themselves, not divided by tau
            (what the reference's segmentation models concatenate; its detectors use cosine / tau).
        prompting: "post", "pre" or "none" (above).
        context_queries: the learnable queries of "pre" (N x D); None otherwise.
    """

    def __init__(
        self,
        prompt_encoder: PromptTextEncoder,
        context_decoder: Optional[ContextDecoder],
        vocabulary: Sequence[str],
        *,
        embed_dim: int,
        tau: float = 0.07,
        gamma_init: float = 1e-4,
        score_map_feature: str = "res5",
        raw_score_map: bool = False,
        prompting: str = "post",
        context_queries: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        if prompting not in PROMPTING_MODES:
            raise ValueError(f"MODEL.DENSECLIP.PROMPTING must be one of {PROMPTING_MODES}, got '{prompting}'")
        if (context_decoder is None) != (prompting == "none") or (context_queries is None) != (prompting != "pre"):
            raise ValueError(
                f"prompting '{prompting}' needs {'no' if prompting == 'none' else 'a'} context decoder and "
                f"{'its' if prompting == 'pre' else 'no'} context queries"
            )
        self.prompting = prompting
        self.prompt_encoder = prompt_encoder
        self.context_decoder = context_decoder
        self.gamma = nn.Parameter(torch.full((embed_dim,), gamma_init)) if prompting == "post" else None
        self.context_queries = nn.Parameter(context_queries) if context_queries is not None else None
        self.tau = tau
        self.score_map_feature = score_map_feature
        self.raw_score_map = raw_score_map
        # K x D text embeddings of the vocabulary, computed once outside training (empty: not yet).
        # A buffer so that ``.to()`` moves it and an exported model carries it; not persistent,
        # since checkpoints hold the weights it is a function of.
        self.register_buffer("text_embeddings_cache", torch.empty(0, embed_dim), persistent=False)
        self._register_load_state_dict_pre_hook(self._drop_text_cache)
        self._vocabulary: List[str] = []
        self._tokens: Optional[PromptTokens] = None
        self.set_vocabulary(vocabulary)

    @property
    def vocabulary(self) -> List[str]:
        return list(self._vocabulary)

    @property
    def truncated_names(self) -> Dict[str, str]:
        """The vocabulary's names cut to fit the text context, each with the text that was kept."""
        return dict(self._tokens.truncated) if self._tokens is not None else {}

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Use ``class_names`` from the next forward on. The one door of a vocabulary into the
        model: the names are validated and tokenized here, once, before anything changes."""
        tokens = self.prompt_encoder.prompt_tokens(class_names)  # validates, warns about truncation
        self._vocabulary = list(class_names)
        self._tokens = tokens
        self._drop_text_cache()

    # ------------------------------------------------------------------------------- text
    def _drop_text_cache(self, *args, **kwargs) -> None:
        self.text_embeddings_cache = self.text_embeddings_cache.new_empty((0, self.text_embeddings_cache.shape[1]))

    def _text_is_learnable(self) -> bool:
        return any(p.requires_grad for p in self.prompt_encoder.parameters())

    def class_text_embeddings(self) -> torch.Tensor:
        """K x D text embeddings of the vocabulary (before context refinement).

        They do not depend on the image: outside training (or with a fully frozen prompt) they are
        computed once per vocabulary and kept in ``text_embeddings_cache`` (also across ``eval()``),
        so inference never re-runs the text encoder. A training step with a learnable prompt
        computes them afresh and drops the cache, which that step's update makes stale.
        Pre-model prompting has no such embeddings: its text depends on the image.
        """
        if self.prompting == "pre":
            raise RuntimeError(
                "MODEL.DENSECLIP.PROMPTING 'pre' has no image-independent text embeddings: the text "
                "tower runs per image (a graph of this model must contain the text tower)"
            )
        if self.training and self._text_is_learnable() and torch.is_grad_enabled():
            self._drop_text_cache()
            return self.prompt_encoder(self._tokens)
        if self.text_embeddings_cache.numel() == 0:
            with torch.no_grad():
                self.text_embeddings_cache = self.prompt_encoder(self._tokens)
        return self.text_embeddings_cache

    @staticmethod
    def visual_tokens(global_embed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The decoder's memory: B x (1 + HW) x D tokens [global, dense...] of each image."""
        return torch.cat([global_embed.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)

    def refine_text(self, text: torch.Tensor, global_embed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Post-model prompting: the text attends to the image's tokens [global, dense...]."""
        text = text.unsqueeze(0).expand(dense.shape[0], -1, -1)
        if self.context_decoder is None:
            return text
        return text + self.gamma * self.context_decoder(text, self.visual_tokens(global_embed, dense))

    def prompted_text(self, global_embed: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Pre-model prompting: the queries attend to the image's tokens; their outputs are every
        prompt's context tokens, encoded by the text tower per image. B x K x D."""
        memory = self.visual_tokens(global_embed, dense)
        queries = self.context_queries.to(memory.dtype).unsqueeze(0).expand(memory.shape[0], -1, -1)
        return self.prompt_encoder.encode(self._tokens, image_context=self.context_decoder(queries, memory))

    def forward(self, image_features: Dict[str, torch.Tensor]) -> TextSideOutput:
        dense, global_embed = image_features[CLIP_DENSE], image_features[CLIP_GLOBAL]
        if self.prompting == "pre":
            text = self.prompted_text(global_embed, dense).to(dense.dtype)
        else:
            text = self.refine_text(self.class_text_embeddings().to(dense.dtype), global_embed, dense)
        return TextSideOutput(text, pixel_text_score_map(dense, text, 1.0 if self.raw_score_map else self.tau))

    def score_logits(self, score_map: torch.Tensor) -> torch.Tensor:
        """cosine / tau, the logits the auxiliary losses read, from :meth:`forward`'s score maps."""
        return score_map / self.tau if self.raw_score_map else score_map

    # ------------------------------------------------------------------------------- FPN input
    def fuse(self, image_features: Dict[str, torch.Tensor], score_map: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The FPN's input: the image features with the score maps appended (as channels) to
        ``score_map_feature``, resized to it when the dense embeddings have another stride (ViT)."""
        target = image_features[self.score_map_feature]
        if score_map.shape[-2:] != target.shape[-2:]:
            score_map = F.interpolate(score_map, size=target.shape[-2:], mode="bilinear", align_corners=False)
        fused = {k: v for k, v in image_features.items() if k not in (CLIP_DENSE, CLIP_GLOBAL)}
        fused[self.score_map_feature] = torch.cat([target, score_map.to(target.dtype)], dim=1)
        return fused

    def fused_shapes(self, image_shapes: Dict[str, ShapeSpec]) -> Dict[str, ShapeSpec]:
        """Shapes of :meth:`fuse`'s output for an image encoder's declared shapes."""
        if self.score_map_feature not in image_shapes:
            raise ValueError(
                f"MODEL.DENSECLIP.SCORE_MAP_FEATURE '{self.score_map_feature}' is not one of the image "
                f"encoder's features {sorted(image_shapes)}"
            )
        shapes = {k: v for k, v in image_shapes.items() if k not in (CLIP_DENSE, CLIP_GLOBAL)}
        target = shapes[self.score_map_feature]
        shapes[self.score_map_feature] = ShapeSpec(channels=target.channels + len(self._vocabulary), stride=target.stride)
        return shapes
