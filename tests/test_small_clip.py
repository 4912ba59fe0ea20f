"""The caption side of the synthetic shapes and the small CLIP pretrained on it: the 8 x 8 colour-shape
vocabulary, captions, held-out crops, a few pretraining steps with open_clip's ClipLoss, the cached
checkpoint, and its loading through MODEL.CLIP.PRETRAINED into the quickstart models."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from open_clip.factory import load_state_dict

from denseclip import add_denseclip_config
from denseclip.clip_loading import ATTENTION_POOL_POSITIONS, resize_attention_pool_grid
from denseclip.data import (
    COLOURS,
    SHAPES,
    SYNTHETIC_CLASSES,
    SYNTHETIC_GRID_CLASSES,
    caption,
    caption_pairs,
    grid_cell,
    object_crops,
)
from denseclip.pretraining import SmallCLIPSettings, build_or_reuse_small_clip, make_training_pairs, pretrain

REPO_ROOT = Path(__file__).resolve().parent.parent
# A handful of pairs at 64 pixels, a high rate: loss must fall within a few steps (it memorises them).
TINY = SmallCLIPSettings(image_size=64, num_pairs=8, steps=6, batch_size=8, lr=2e-3, warmup_steps=1, crops_per_class=1)


# ------------------------------------------------------------------------------------ vocabulary
def test_grid_holds_the_detection_classes():
    assert len(COLOURS) >= 6 and len(SHAPES) >= 6
    assert len(SYNTHETIC_GRID_CLASSES) == len(set(SYNTHETIC_GRID_CLASSES)) == len(COLOURS) * len(SHAPES) >= 36
    assert set(SYNTHETIC_CLASSES) <= set(SYNTHETIC_GRID_CLASSES) and len(SYNTHETIC_CLASSES) == 8
    assert grid_cell("orange star") == (COLOURS.index("orange"), SHAPES.index("star"))
    with pytest.raises(ValueError, match="'teal circle' is not '<colour> <shape>'"):
        grid_cell("teal circle")


def test_captions_name_the_objects_from_left_to_right():
    assert caption(["red circle"]) == "a red circle"
    assert caption(["red circle", "orange star"]) == "a red circle and an orange star"
    assert caption(["red circle", "green star", "blue square"]) == "a red circle, a green star and a blue square"
    pairs = caption_pairs(12, image_size=64, seed=0)
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im, _ in pairs)
    for _, text in pairs:
        names = text.replace(" and ", ", ").split(", ")
        assert 1 <= len(names) <= 3
        assert all(n.split(" ", 1)[1] in SYNTHETIC_GRID_CLASSES for n in names), text


def test_pairs_and_crops_are_seeded():
    a, b, c = caption_pairs(4, 64, seed=0), caption_pairs(4, 64, seed=0), caption_pairs(4, 64, seed=1)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    # A window of the stream is the same as the stream's items at those positions.
    assert caption_pairs(2, 64, seed=0, start=2)[1][1] == a[3][1]
    classes = ["red circle", "red star", "blue star"]
    crops = object_crops(2, crop_size=48, seed=0, classes=classes)
    again = object_crops(2, crop_size=48, seed=0, classes=classes)
    assert [label for _, label in crops] == [0, 0, 1, 1, 2, 2]
    assert all(x.shape == (48, 48, 3) and np.array_equal(x, y) for (x, _), (y, _) in zip(crops, again))


# ------------------------------------------------------------------------------------ pretraining
@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """The tiny settings pretrained through the cache; returns (checkpoint path, build, losses)."""
    images, tokens, captions = make_training_pairs(TINY)
    assert images.shape == (8, 64, 64, 3) and tokens.shape == (8, 77) and len(set(captions)) > 1
    _, losses = pretrain(TINY, images, tokens)
    path = tmp_path_factory.mktemp("small_clip") / "clip.pt"
    return path, build_or_reuse_small_clip(str(path), TINY), losses


def test_pretraining_lowers_the_contrastive_loss(small_clip):
    _, _, losses = small_clip
    assert len(losses) == TINY.steps and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.2, losses


def test_checkpoint_is_cached_and_zero_shot_measured(small_clip):
    path, build, _ = small_clip
    assert not build.reused and path.is_file()
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["settings"]["steps"] == TINY.steps and manifest["last_loss"] < manifest["first_loss"]
    # 1 crop per class of the 64-class grid.
    assert build.zero_shot.total == len(SYNTHETIC_GRID_CLASSES) and 0 <= build.zero_shot.correct <= build.zero_shot.total
    assert build.zero_shot.line().startswith("zero-shot top-1 ") and "(chance 1.6%)" in build.zero_shot.line()
    again = build_or_reuse_small_clip(str(path), TINY)
    assert again.reused and again.zero_shot == build.zero_shot
    changed = build_or_reuse_small_clip(str(path), SmallCLIPSettings(**{**TINY.as_dict(), "steps": 2}))
    assert not changed.reused


@pytest.mark.parametrize("config", ["mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml", "semantic_fpn_denseclip_RN-tiny_shapes.yaml"])
def test_checkpoint_loads_through_model_clip_pretrained(small_clip, config):
    path, _, _ = small_clip
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "Synthetic" / config))
    cfg.merge_from_list(["MODEL.CLIP.PRETRAINED", str(path), "MODEL.DEVICE", "cpu", "MODEL.CLIP.NORM", "BN"])
    model = build_model(cfg)
    saved = load_state_dict(str(path))
    own = model.state_dict()
    # The image encoder: every tensor as saved; the positional grid (2x2 at 64 px) resized to
    # RN-tiny's 7x7 as the loader does for any checkpoint of another resolution.
    visual = {k: v for k, v in saved.items() if k.startswith("visual.")}
    resized = dict(visual)
    resize_attention_pool_grid(resized, _rn_tiny())
    assert resized[ATTENTION_POOL_POSITIONS].shape[0] == 50 and visual[ATTENTION_POOL_POSITIONS].shape[0] == 5
    for key, value in visual.items():
        if key == ATTENTION_POOL_POSITIONS:
            # The segmentation config keeps its own (trainable) grid, resized once from CLIP's.
            if "semantic" not in config:
                assert torch.equal(own["backbone." + key], resized[key]), key
            continue
        assert torch.equal(own["backbone." + key], value), key
    # The text tower (frozen in training): the prompt encoder's copy of CLIP's text weights.
    prefix = "text_side.prompt_encoder.clip_text."
    if not any(k.startswith(prefix) for k in own):
        prefix = "backbone.text_side.prompt_encoder.clip_text."
    for key in ("token_embedding.weight", "text_projection", "ln_final.weight", "transformer.resblocks.1.mlp.c_fc.weight"):
        assert torch.equal(own[prefix + key], saved[key]), key
    n = own[prefix + "positional_embedding"].shape[0]
    assert torch.equal(own[prefix + "positional_embedding"], saved["positional_embedding"][:n])


def _rn_tiny() -> torch.nn.Module:
    """RN-tiny as the configs build it (224-pixel architecture: a 7x7 positional grid)."""
    from denseclip.clip_loading import create_clip_model

    return create_clip_model("RN-tiny", model_config_file="RN-tiny.json")
