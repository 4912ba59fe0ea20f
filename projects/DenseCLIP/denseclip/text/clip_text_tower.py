"""CLIP's text transformer, taken from an open_clip ``CLIP`` model and shortened to a prompt's
context length: the frozen tower that :class:`.prompt_encoder.PromptTextEncoder` runs its prompts
through, with the shared-prefix encoding that runs a prompt's common start once."""
from __future__ import annotations

import functools

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

__all__ = ["CLIPTextTower", "clip_tokenizer"]

_CLIP_TEXT_ATTRIBUTES = (
    "token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask",
)


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> SimpleTokenizer:
    """CLIP's BPE tokenizer (the one ``open_clip.tokenize`` uses), built once per process."""
    return SimpleTokenizer()


class CLIPTextTower(nn.Module):
    """The text tower of an open_clip ``CLIP`` model, shortened to ``context_length``.

    The token embedding, transformer, final LayerNorm and text projection are the CLIP model's own
    modules (shared, not copied), so weights loaded into the CLIP model are the weights used here.
    Only the positional embedding is a copy, of its first ``context_length`` rows, because a
    parameter cannot be a slice of another one. Whether it trains is the owner's decision
    (:class:`PromptTextEncoder`'s ``freeze_text_tower``).
    """

    def __init__(self, clip_model: nn.Module, context_length: int) -> None:
        super().__init__()
        missing = [name for name in _CLIP_TEXT_ATTRIBUTES if getattr(clip_model, name, None) is None]
        if missing:
            raise TypeError(
                f"PromptTextEncoder needs an open_clip CLIP model with a built-in text transformer; "
                f"{type(clip_model).__name__} lacks {', '.join(missing)} (CustomTextCLIP / HF text towers "
                "are not supported)"
            )
        pool_type = getattr(clip_model, "text_pool_type", "argmax")
        if pool_type != "argmax":
            raise ValueError(
                f"PromptTextEncoder pools the end-of-text token (text_pool_type 'argmax'); this CLIP model "
                f"uses '{pool_type}'"
            )
        tokenizer = clip_tokenizer()
        vocab_size = getattr(clip_model, "vocab_size", tokenizer.vocab_size)
        if vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"The CLIP model's vocabulary has {vocab_size} tokens but CLIP's BPE tokenizer has "
                f"{tokenizer.vocab_size}; this text tower needs another tokenizer"
            )
        self.token_embedding = clip_model.token_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.positional_embedding = nn.Parameter(
            clip_model.positional_embedding[:context_length].detach().clone()
        )
        # Causal mask: each token sees itself and earlier tokens, so padding after EOT is harmless.
        self.register_buffer("attn_mask", clip_model.attn_mask[:context_length, :context_length].clone(),
                             persistent=False)

    @property
    def width(self) -> int:
        """Token embedding width of the text transformer (512 for RN50/RN101)."""
        return self.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text embedding space (1024 for RN50, 512 for RN101)."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        return self.text_projection.shape[1]

    def forward(self, token_embeddings: torch.Tensor, eot_index: torch.Tensor, shared_prefix: int = 0,
                groups: int = 1) -> torch.Tensor:
        """Encode K sequences of token embeddings (K x L x width) and pool each at its EOT position
        (``eot_index``: K positions, best on the CPU, where reading their maximum needs no GPU sync).

        Returns K x embed_dim text embeddings, as ``CLIP.encode_text`` computes them. Under the
        causal mask a token's state depends only on the tokens before it, so tokens after the last
        EOT are dropped, and the first ``shared_prefix`` tokens, identical in every sequence (SOT
        and the learnable context), are encoded once instead of once per class. With ``groups`` G
        the G x K sequences come as G consecutive blocks of K (pre-model prompting: one block per
        image, each with its own context), the prefix shared within a block and encoded once per
        block; ``eot_index`` then has G x K positions.
        """
        cast_dtype = self.transformer.get_cast_dtype()
        length = int(eot_index.max()) + 1
        x = token_embeddings[:, :length].to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = self.attn_mask[:length, :length]
        prefix = min(shared_prefix, int(eot_index.min()))  # every EOT stays in the per-class part
        if prefix > 0:
            x = self._encode_after_shared_prefix(x, mask, prefix, groups)
            eot_index = eot_index - prefix
        else:
            x = self.transformer(x, attn_mask=mask)
        # LayerNorm acts per token, so normalising only the pooled token equals CLIP's order.
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device, non_blocking=True)])
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _encode_after_shared_prefix(self, x: torch.Tensor, mask: torch.Tensor, prefix: int, groups: int = 1) -> torch.Tensor:
        """The transformer's output for tokens ``prefix:`` of every sequence, the first ``prefix``
        tokens (the same in every row of a group) run once per group: each block's per-class tokens
        attend to the block's input for the shared prefix and for themselves, exactly as in the full
        sequence."""
        if not getattr(self.transformer, "batch_first", True):
            raise ValueError("shared-prefix encoding needs a batch-first open_clip text transformer")
        per_group = x.shape[0] // groups
        shared, own = x[::per_group, :prefix], x[:, prefix:]
        for block in self.transformer.resblocks:
            normed_shared = block.ln_1(shared)
            normed_shared = normed_shared[:, None].expand(-1, per_group, -1, -1).reshape(own.shape[0], prefix, -1)
            normed_own = block.ln_1(own)
            keys = torch.cat([normed_shared, normed_own], dim=1)
            own = own + block.ls_1(block.attention(q_x=normed_own, k_x=keys, v_x=keys, attn_mask=mask[prefix:]))
            own = own + block.ls_2(block.mlp(block.ln_2(own)))
            shared = block(shared, attn_mask=mask[:prefix, :prefix])
        return own
