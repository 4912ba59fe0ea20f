"""Names that fit (issue 28): the language-guided configs' long name context, visible warnings where a
model's context is fixed, names identical once cut, commas and line breaks, prompt ensembles."""
import logging

import numpy as np
import open_clip
import pytest
import torch
from conftest import REPO_ROOT, load_config
from PIL import Image

from denseclip.clip_loading import register_model_config
from denseclip.predictor import parse_vocabulary
from denseclip.text import PromptTextEncoder
from denseclip.text.prompt_templates import PROMPT_ENSEMBLES, prompt_ensemble

SYNTHETIC = "Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"
TINY = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
        "TEST.DETECTIONS_PER_IMAGE", "5"]
# The reference's fixed context: 3 name tokens.
FIXED_CONTEXT = ["MODEL.DENSECLIP.NAME_CONTEXT_LENGTH", "5", "MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH", "13"]
LONG_NAME = "peeler (tool for fruit and vegetables)"  # LVIS v1's longest name: 9 tokens


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(register_model_config("RN-tiny.json"), pretrained=None).eval()


def test_language_configs_fit_lvis_names_and_paper_configs_keep_the_reference_context():
    for config in ("COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml", "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml",
                   "ADE20K/semantic_fpn_denseclip_language_R50_512x512_80k.yaml", SYNTHETIC):
        d = load_config(config).MODEL.DENSECLIP
        assert (d.NAME_CONTEXT_LENGTH, d.TEXT_CONTEXT_LENGTH) == (69, 77), config
    for config in ("COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", "COCO/retinanet_denseclip_R101_FPN_1x.yaml",
                   "ADE20K/semantic_fpn_denseclip_R50_512x512_80k.yaml"):
        d = load_config(config).MODEL.DENSECLIP
        assert (d.NAME_CONTEXT_LENGTH, d.TEXT_CONTEXT_LENGTH) == (5, 13), config


def test_longer_context_changes_nothing_for_names_that_fit(tiny_clip):
    """The causal mask and positions: a name that fits 3 tokens gets the same embedding at 77 tokens."""
    reference = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=5, context_length=13)
    long = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=69, context_length=77)
    long.context.data.copy_(reference.context.data)
    names = ["person", "traffic light", "hot dog", "café"]
    with torch.no_grad():
        torch.testing.assert_close(long(names), reference(names), atol=1e-5, rtol=0)
        assert not long.prompt_tokens([LONG_NAME]).truncated
        full = long([LONG_NAME])
        cut = reference([LONG_NAME])
    assert not torch.allclose(full, cut)


def test_fixed_context_warns_naming_what_was_kept_and_rejects_names_equal_once_cut(tiny_clip, caplog):
    encoder = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=5, context_length=13)
    with caplog.at_level(logging.WARNING, logger="denseclip.text.prompt_encoder"):
        tokens = encoder.prompt_tokens(["dog", LONG_NAME])
    assert tokens.truncated == {LONG_NAME: "peeler ("}
    assert "cut to 'peeler ('" in caplog.text and "NAME_CONTEXT_LENGTH 5" in caplog.text
    with pytest.raises(ValueError, match=r"'large yellow construction vehicle' and 'large yellow construction crane' "
                                         r"are the same once cut.*'large yellow construction'"):
        encoder(["large yellow construction vehicle", "large yellow construction crane"])
    # With room for them, the two names are different classes.
    roomy = PromptTextEncoder(tiny_clip, n_context=8, name_context_length=69, context_length=77)
    assert roomy(["large yellow construction vehicle", "large yellow construction crane"]).shape[0] == 2


def test_commas_and_line_breaks_separate_names():
    assert parse_vocabulary("person\ndog\r\ncar") == ["person", "dog", "car"]
    assert parse_vocabulary("red circle, blue square\n\n green star ,\n") == ["red circle", "blue square", "green star"]
    assert parse_vocabulary("coco,") == ["coco"]  # a list, not the preset
    assert len(parse_vocabulary(" coco\n")) == 80  # blanks around a preset's name (a box's last line break) ignored


def test_prompt_ensemble_is_the_mean_of_normalised_template_embeddings(tiny_clip):
    templates = prompt_ensemble("vild")
    assert len(templates) == 20 and "a photo of a {}." in templates and len(set(templates)) == 20
    encoder = PromptTextEncoder(tiny_clip, prompt="template", n_context=0, context_length=77, templates=templates)
    names = ["person", "traffic light", "hot dog"]
    with torch.no_grad():
        actual = encoder(names)
        per_template = torch.stack([
            torch.nn.functional.normalize(tiny_clip.encode_text(open_clip.tokenize([t.format(n) for t in templates])), dim=-1)
            .mean(0) for n in names
        ])
    torch.testing.assert_close(actual, torch.nn.functional.normalize(per_template, dim=-1), atol=1e-5, rtol=0)
    # Encoded in chunks of whole classes when no gradient is needed: the same embeddings.
    tokens = encoder.prompt_tokens(names)
    with torch.no_grad():
        chunked = torch.cat([encoder.encode(chunk) for chunk in tokens.chunks(2 * len(templates))])
    torch.testing.assert_close(chunked, actual)
    with pytest.raises(ValueError, match="needs MODEL.DENSECLIP.PROMPT 'template'"):
        PromptTextEncoder(tiny_clip, prompt="learnable", templates=templates)
    with pytest.raises(ValueError, match="PROMPT_ENSEMBLE must be '' .* one of \\['vild'\\], got 'clip80'"):
        prompt_ensemble("clip80")
    assert set(PROMPT_ENSEMBLES) == {"vild"}


def test_prompt_ensemble_config_builds_a_zero_shot_language_model():
    from detectron2.modeling import build_model

    cfg = load_config(SYNTHETIC, [*TINY, "MODEL.DENSECLIP.PROMPT", "template", "MODEL.DENSECLIP.N_CONTEXT", "0",
                                  "MODEL.DENSECLIP.PROMPT_ENSEMBLE", "vild"])
    model = build_model(cfg).eval()
    encoder = model.text_side.prompt_encoder
    assert encoder.context is None and len(encoder.templates) == 20
    text = model.text_side.class_text_embeddings()
    assert text.shape[0] == 8 and torch.allclose(text.norm(dim=-1), torch.ones(8))


def test_page_and_cli_show_names_cut_by_a_fixed_context(tmp_path, capsys):
    from denseclip.demo_cli import get_parser, run_demo
    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession

    image = tmp_path / "grey.png"
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(image)
    session = WebDemoSession(DenseCLIPPredictor(load_config(SYNTHETIC, [*TINY, *FIXED_CONTEXT])))
    result = session.run(str(image), f"red circle\n{LONG_NAME}\nblue square", 0.5)
    assert result.ok and session.class_names == ["red circle", LONG_NAME, "blue square"]
    assert "**Warning:** 1 class name(s) do not fit" in result.message and "-> 'peeler ('" in result.message
    duplicate = session.run(str(image), "large yellow construction vehicle\nlarge yellow construction crane", 0.5)
    assert not duplicate.ok and "are the same once cut" in duplicate.message

    args = get_parser().parse_args([
        "--config-file", str(REPO_ROOT / "configs" / SYNTHETIC), "--cpu", "--input", str(image),
        "--output", str(tmp_path / "out"), "--vocabulary", f"red circle,{LONG_NAME}",
        "--opts", "MODEL.CLIP.PRETRAINED", "", *TINY, *FIXED_CONTEXT,
    ])
    assert run_demo(args).exit_code == 0
    assert "Warning: 1 class name(s) do not fit" in capsys.readouterr().err
