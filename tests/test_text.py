"""Text side of DenseCLIP: prompt encoder over CLIP's frozen text tower, and the context decoder."""
import logging

import open_clip
import pytest
import torch

from denseclip.clip_loading import register_model_config
from denseclip.text import ContextDecoder, PromptTextEncoder
from denseclip.text.prompt_encoder import shared_prefix_length

SOT, EOT = 49406, 49407
TINY_EMBED_DIM, TINY_WIDTH = 256, 128


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(register_model_config("RN-tiny.json"), pretrained=None).eval()


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- ContextDecoder
@pytest.mark.parametrize("visual_dim, expected", [(1024, 3_948_800), (512, 3_553_024)])
def test_context_decoder_parameter_count_matches_reference(visual_dim, expected):
    assert _n_params(ContextDecoder(visual_dim)) == expected


def test_context_decoder_output_shape_and_init():
    decoder = ContextDecoder(visual_dim=64, width=32, heads=4, layers=2)
    out = decoder(torch.randn(2, 5, 64), torch.randn(2, 17, 64))
    assert out.shape == (2, 5, 64)
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(m.bias is None or not m.bias.any() for m in linears)
    assert all(bool((m.weight == 1).all()) and not m.bias.any() for m in norms)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 0.002
    # Attention: q/k/v without bias, output projection with bias (the reference's layout).
    attn = decoder.decoder[0].cross_attn
    assert attn.q_proj.bias is None and attn.k_proj.bias is None and attn.v_proj.bias is None
    assert attn.proj.bias is not None


def test_context_decoder_is_class_permutation_equivariant_and_reads_visual():
    decoder = ContextDecoder(visual_dim=64, width=32, heads=4, layers=2).eval()
    text, visual = torch.randn(1, 6, 64), torch.randn(1, 10, 64)
    out = decoder(text, visual)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(decoder(text[:, perm], visual), out[:, perm])
    # Visual tokens are an unordered memory: permuting them changes nothing, new ones change the output.
    torch.testing.assert_close(decoder(text, visual[:, torch.randperm(10)]), out)
    assert not torch.allclose(decoder(text, torch.randn(1, 10, 64)), out)


def test_context_decoder_rejects_mismatched_inputs():
    decoder = ContextDecoder(visual_dim=64, width=32, heads=4, layers=1)
    with pytest.raises(ValueError, match="batch sizes differ"):
        decoder(torch.randn(1, 5, 64), torch.randn(2, 10, 64))
    with pytest.raises(ValueError, match="built for dimension 64"):
        decoder(torch.randn(2, 5, 32), torch.randn(2, 10, 64))
    with pytest.raises(ValueError, match="WIDTH .* divisible"):
        ContextDecoder(visual_dim=64, width=30, heads=4)


# ------------------------------------------------------------------------------- PromptTextEncoder
def test_template_without_context_equals_open_clip_encode_text(tiny_clip):
    names = ["person", "traffic light", "café", "hot dog"]
    encoder = PromptTextEncoder(tiny_clip, prompt="template", n_context=0, context_length=77)
    texts = [f"a photo of a {name}." for name in names]
    expected = tiny_clip.encode_text(open_clip.tokenize(texts))
    with torch.no_grad():
        actual = encoder(names)
    assert actual.shape == (4, TINY_EMBED_DIM)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_template_tokens_match_open_clip_at_short_context(tiny_clip):
    names = ["dog", "a remarkably long and verbose class description"]
    encoder = PromptTextEncoder(tiny_clip, prompt="template", n_context=0, context_length=13)
    texts = [f"a photo of a {name}." for name in names]
    assert torch.equal(encoder.tokenize(names), open_clip.tokenize(texts, context_length=13))


def test_learnable_sequence_layout(tiny_clip):
    names = ["cat", "traffic light", "sports ball"]
    encoder = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=5, context_length=13)
    ids = encoder.tokenize(names)
    assert ids.shape == (3, 13)
    assert (ids[:, 0] == SOT).all()
    assert (ids[:, 1:9] == 0).all()  # placeholders replaced by the context vectors
    for row, name in enumerate(names):
        name_ids = open_clip.tokenize(name, context_length=5)[0]  # [SOT, words, EOT, 0...]
        n_words = int(name_ids.argmax()) - 1
        assert torch.equal(ids[row, 9:9 + n_words], name_ids[1:1 + n_words])
        assert int(ids[row].argmax()) == 9 + n_words
        assert ids[row, 9 + n_words] == EOT
        assert (ids[row, 10 + n_words:] == 0).all()
    assert int(ids[0].argmax()) == 10  # "cat" is one token: [SOT, ctx x 8, cat, EOT, pad, pad]


def test_learnable_forward_matches_manual_computation(tiny_clip):
    encoder = PromptTextEncoder(tiny_clip, n_context=4, name_context_length=6, context_length=12)
    names = ["cat", "dining table"]
    with torch.no_grad():
        actual = encoder(names)
        name_ids = open_clip.tokenize(names, context_length=6)  # [SOT, words, EOT, pad]
        rows = []
        for k in range(len(names)):
            tokens = torch.cat([name_ids[k, :1], torch.zeros(4, dtype=torch.long), name_ids[k, 1:],
                                torch.zeros(2, dtype=torch.long)])
            x = tiny_clip.token_embedding(tokens)
            x = torch.cat([x[:1], encoder.context, x[5:]]) + tiny_clip.positional_embedding[:12]
            x = tiny_clip.transformer(x[None], attn_mask=tiny_clip.attn_mask[:12, :12])[0]
            x = tiny_clip.ln_final(x)
            eot = int(name_ids[k].argmax()) + 4
            rows.append(x[eot] @ tiny_clip.text_projection)
    torch.testing.assert_close(actual, torch.stack(rows), atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompt", ["learnable", "template"])
def test_shared_prefix_encoding_equals_the_full_sequences_and_their_gradients(tiny_clip, prompt):
    """SOT and the context (or a template's first words) are encoded once for all classes."""
    kwargs = {"n_context": 0, "context_length": 20} if prompt == "template" else {}
    encoder = PromptTextEncoder(tiny_clip, prompt=prompt, **kwargs)
    names = ["cat", "traffic light", "hot dog", "tennis racket"]
    ids = encoder.tokenize(names)
    tokens = encoder.clip_text.token_embedding(ids)
    if encoder.context is not None:
        context = encoder.context.unsqueeze(0).expand(len(names), -1, -1)
        tokens = torch.cat([tokens[:, :1], context, tokens[:, 9:]], dim=1)
    expected_prefix = 9 if prompt == "learnable" else 5  # SOT + 8 context / SOT "a photo of a"
    assert shared_prefix_length(ids) == expected_prefix
    blocks = encoder.clip_text.transformer.resblocks
    calls = []
    handles = [b.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[:2])) for b in blocks]
    try:
        shared = encoder.clip_text(tokens, ids.argmax(dim=-1), expected_prefix)
    finally:
        for h in handles:
            h.remove()
    assert calls == [(1, expected_prefix)] * len(blocks)  # whole blocks run only on the one shared prefix
    full = encoder.clip_text(tokens, ids.argmax(dim=-1), 0)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    if encoder.context is not None:
        (grad_shared,) = torch.autograd.grad(shared.pow(2).sum(), encoder.context)
        (grad_full,) = torch.autograd.grad(full.pow(2).sum(), encoder.context)
        torch.testing.assert_close(grad_shared, grad_full, atol=1e-4, rtol=1e-4)


def test_shared_prefix_length():
    assert shared_prefix_length(torch.tensor([[5, 0, 0, 7, 9], [5, 0, 0, 8, 9]])) == 3
    assert shared_prefix_length(torch.tensor([[5, 1], [6, 1]])) == 0  # differs at the first token
    assert shared_prefix_length(torch.tensor([[5, 0, 7]])) == 3  # one row: all of it


def test_learnable_context_trains_while_text_tower_is_frozen(tiny_clip):
    encoder = PromptTextEncoder(tiny_clip)
    assert encoder.width == TINY_WIDTH and encoder.embed_dim == TINY_EMBED_DIM
    assert encoder.context.shape == (8, TINY_WIDTH) and encoder.context.requires_grad
    # The CLIP text modules are shared with the CLIP model, not copied.
    assert encoder.clip_text.transformer is tiny_clip.transformer
    assert encoder.clip_text.token_embedding is tiny_clip.token_embedding
    assert encoder.clip_text.text_projection is tiny_clip.text_projection
    trainable = [name for name, p in encoder.named_parameters() if p.requires_grad]
    assert trainable == ["context"]
    assert all(name.startswith("clip_text.") for name, _ in encoder.named_parameters() if name != "context")

    encoder(["cat", "dog", "zebra"]).pow(2).sum().backward()
    assert encoder.context.grad is not None and encoder.context.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.clip_text.parameters())

    with torch.no_grad():
        out = encoder(["cat", "dog"])
    assert out.shape == (2, TINY_EMBED_DIM) and not out.requires_grad


def test_non_ascii_class_name(tiny_clip):
    encoder = PromptTextEncoder(tiny_clip)
    ids = encoder.tokenize(["crème brûlée", "crepe"])
    assert ids[0, 9] != ids[1, 9]
    out = encoder(["crème brûlée", "crepe"])
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])


def test_long_name_is_truncated_keeping_eot_with_one_warning(tiny_clip, caplog):
    encoder = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=5, context_length=13)
    long_name = "large yellow construction vehicle"
    full = open_clip.tokenize(long_name)[0]
    assert int(full.argmax()) - 1 > 3  # more than the 3 word tokens that fit
    with caplog.at_level(logging.WARNING, logger="denseclip.text.prompt_encoder"):
        ids = encoder.tokenize(["dog", long_name])
        encoder.tokenize(["dog", long_name])
    assert torch.equal(ids[1, 9:12], full[1:4])
    assert ids[1, 12] == EOT and int(ids[1].argmax()) == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and long_name in warnings[0].getMessage()


@pytest.mark.parametrize(
    "names, message",
    [
        ([], "vocabulary is empty"),
        (["cat", "dog", "cat"], "duplicate class names.*cat"),
        (["Traffic  light", "traffic light"], "duplicate class names.*traffic light"),
        (["cat", ""], "non-blank strings"),
        (["cat", "   "], "non-blank strings"),
        (["cat", 3], "non-blank strings"),
    ],
)
def test_vocabulary_validation(tiny_clip, names, message):
    encoder = PromptTextEncoder(tiny_clip)
    with pytest.raises(ValueError, match=message):
        encoder(names)


def test_context_length_validation(tiny_clip):
    with pytest.raises(ValueError, match=r"N_CONTEXT \(8\) \+ MODEL.DENSECLIP.NAME_CONTEXT_LENGTH \(6\).*"
                                         r"TEXT_CONTEXT_LENGTH \(13\)"):
        PromptTextEncoder(tiny_clip, n_context=8, name_context_length=6, context_length=13)
    with pytest.raises(ValueError, match=r"TEXT_CONTEXT_LENGTH \(78\) exceeds .* \(77\)"):
        PromptTextEncoder(tiny_clip, prompt="template", n_context=0, context_length=78)
    with pytest.raises(ValueError, match="set MODEL.DENSECLIP.N_CONTEXT to 0"):
        PromptTextEncoder(tiny_clip, prompt="template", n_context=8)
    with pytest.raises(ValueError, match="MODEL.DENSECLIP.PROMPT"):
        PromptTextEncoder(tiny_clip, prompt="coop")
    with pytest.raises(ValueError, match="TEMPLATE"):
        PromptTextEncoder(tiny_clip, prompt="template", n_context=0, template="a photo")


@pytest.mark.parametrize("model_name, expected", [("RN50", 63_657_472), ("RN101", 63_395_328)])
def test_text_tower_parameter_count_matches_reference(model_name, expected):
    encoder = PromptTextEncoder(open_clip.create_model(model_name, pretrained=None), context_length=13)
    assert _n_params(encoder.clip_text) == expected
    assert encoder.width == 512
