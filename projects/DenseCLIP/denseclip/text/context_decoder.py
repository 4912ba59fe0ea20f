"""DenseCLIP's context decoder: class text embeddings attend to the image's visual tokens.

This is the "post-model" context-aware prompting of DenseCLIP (section 3.3 of the paper): the text
embeddings of the K classes are refined with a small transformer decoder whose queries are the text
embeddings and whose memory is the image's visual tokens ([global, dense...]). The caller adds the
output back to the text embeddings, scaled by a learnable ``gamma`` that lives outside this module.

The same decoder serves the paper's "pre-model" prompting (``modeling/text_side.py``): there its
queries are learnable vectors and its outputs, sized ``out_dim`` (the text tower's token width), are
the context tokens of the prompts.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContextDecoder"]


class _MultiHeadAttention(nn.Module):
    """Multi-head attention laid out as in the reference: bias-free q/k/v projections and an output
    projection with bias, followed by dropout.

    ``nn.MultiheadAttention`` cannot drop the q/k/v biases while keeping the output bias, and the
    reference's parameter count (and therefore its checkpoints' layout) depends on that split.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Attend from ``query`` (B x Nq x C) over ``memory`` (B x Nk x C); returns B x Nq x C."""
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(memory))
        v = self._split_heads(self.v_proj(memory))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), no attention dropout
        out = out.transpose(1, 2).reshape(query.shape)
        return self.dropout(self.proj(out))


class _DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: self-attention among the class tokens, cross-attention
    from the class tokens to the visual tokens, then a 4x GELU MLP; each with a residual."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = _MultiHeadAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = _MultiHeadAttention(width, heads, dropout)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.self_attn(normed, normed)
        # The memory is not normalised here: ContextDecoder.memory_proj already ends in a LayerNorm.
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class ContextDecoder(nn.Module):
    """Transformer decoder that makes the class text embeddings aware of one image's content.

    Args:
        visual_dim: dimension D of the CLIP joint embedding space (1024 for RN50, 512 for RN101),
            shared by the text embeddings and the visual tokens.
        width: internal width of the decoder.
        heads: attention heads; must divide ``width``.
        layers: number of decoder layers.
        dropout: dropout after each attention output projection and inside/after each MLP.
        out_dim: width of the outputs; default ``visual_dim`` (post-model prompting: an update of
            the text embeddings). Pre-model prompting sets the text tower's token width.

    With the defaults the module has 3,948,800 parameters for D=1024 and 3,553,024 for D=512, the
    reference implementation's counts. Parameter names follow the reference's layout (memory_proj,
    text_proj, decoder.<i>.{norm1,self_attn,norm2,cross_attn,norm3,mlp}, out_proj; attention
    q_proj/k_proj/v_proj/proj), so the reference's context-decoder weights load by name.
    """

    def __init__(
        self,
        visual_dim: int,
        width: int = 256,
        heads: int = 4,
        layers: int = 3,
        dropout: float = 0.1,
        out_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if visual_dim <= 0 or width <= 0 or heads <= 0 or layers <= 0:
            raise ValueError(
                "ContextDecoder needs positive visual_dim, width, heads and layers "
                f"(got {visual_dim}, {width}, {heads}, {layers}; see MODEL.DENSECLIP.CONTEXT_DECODER)"
            )
        if width % heads != 0:
            raise ValueError(
                f"MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH ({width}) must be divisible by "
                f"MODEL.DENSECLIP.CONTEXT_DECODER.HEADS ({heads})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MODEL.DENSECLIP.CONTEXT_DECODER.DROPOUT must be in [0, 1), got {dropout}")
        self.visual_dim = visual_dim
        self.memory_proj = nn.Sequential(
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, width),
            nn.LayerNorm(width),
        )
        self.text_proj = nn.Sequential(
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, width),
        )
        self.decoder = nn.ModuleList(_DecoderLayer(width, heads, dropout) for _ in range(layers))
        self.out_proj = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, visual_dim if out_dim is None else out_dim),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The reference initialisation: truncated normal (bounds +-2, i.e. effectively untruncated at
        # std 0.02) for linear weights, zero biases, identity LayerNorms.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Refine text embeddings with visual context.

        Args:
            text: B x K x D text embeddings (one row per class, repeated for each image), or the
                queries of pre-model prompting.
            visual: B x N x D visual tokens of each image (the reference uses [global, dense...]).

        Returns:
            B x K x out_dim: the update for the text embeddings (the caller scales it by gamma and
            adds it), or the context tokens of pre-model prompting.
        """
        if text.dim() != 3 or visual.dim() != 3:
            raise ValueError(
                f"ContextDecoder expects text B x K x D and visual B x N x D, got {tuple(text.shape)} "
                f"and {tuple(visual.shape)}"
            )
        if text.shape[0] != visual.shape[0]:
            raise ValueError(
                f"ContextDecoder: batch sizes differ (text {text.shape[0]}, visual {visual.shape[0]}); "
                "expand the text embeddings to the image batch first"
            )
        if text.shape[-1] != self.visual_dim or visual.shape[-1] != self.visual_dim:
            raise ValueError(
                f"ContextDecoder was built for dimension {self.visual_dim}, got text {text.shape[-1]} "
                f"and visual {visual.shape[-1]}"
            )
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)
