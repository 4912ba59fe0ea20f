"""MODEL.DENSECLIP.PROMPTING: post-model (the paper's models), pre-model (queries -> context decoder
-> every prompt's context tokens, the text tower per image) and none. Shapes, gradients, one text
tower pass on B x K sequences, vocabulary swap and checkpoints of "pre", training of each variant."""
import json

import numpy as np
import pytest
import torch
from conftest import load_config, synthetic_batch
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from test_denseclip import train_steps

from denseclip.backbone import CLIP_DENSE, CLIP_GLOBAL
from denseclip.data import register_synthetic_dataset, register_synthetic_from_config
from denseclip.engine import AtomicDetectionCheckpointer, Trainer
from denseclip.engine.optimizer import model_parameter_groups

TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 32]
LANGUAGE_RETINANET = "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml"
MODES = ("post", "pre", "none")


def tiny_model(mode, names=("cat", "dog", "cup"), seed=0, config_file=LANGUAGE_RETINANET, *opts):
    torch.manual_seed(seed)
    cfg = load_config(config_file, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", list(names), "MODEL.DENSECLIP.PROMPTING", mode, *opts])
    return build_model(cfg)


def image_features(model, batch=2, size=(96, 128)):
    with torch.no_grad():
        return model.backbone(torch.randn(batch, 3, *size))


@pytest.mark.parametrize("mode", MODES)
def test_text_and_score_map_shapes(mode):
    model = tiny_model(mode).eval()
    features = image_features(model)
    text, score_map = model.text_side(features)
    dense = features[CLIP_DENSE]
    assert text.shape == (2, 3, dense.shape[1])
    assert score_map.shape == (2, 3, *dense.shape[-2:])
    side = model.text_side
    assert (side.context_decoder is None) == (mode == "none")
    assert (side.gamma is not None) == (mode == "post")
    assert (side.context_queries is not None) == (mode == "pre")
    assert (side.prompt_encoder.context is not None) == (mode != "pre")  # "pre": the context comes from the image
    if mode == "none":  # learnable context only: every image gets the same text
        torch.testing.assert_close(text, side.class_text_embeddings().expand(2, -1, -1))
    if mode == "pre":  # the context decoder of the same size, its outputs of the tower's token width
        assert side.context_queries.shape == (8, dense.shape[1])
        assert side.context_decoder.out_proj[1].out_features == side.prompt_encoder.width
        assert not torch.allclose(text[0], text[1])  # the text depends on the image


def test_pre_text_equals_the_full_sequences_through_the_text_tower():
    """One pass with the SOT + context prefix encoded once per image equals encoding every image's
    K full prompts separately (no shared prefix)."""
    model = tiny_model("pre").eval()
    side, encoder = model.text_side, model.text_side.prompt_encoder
    features = image_features(model)
    memory = side.visual_tokens(features[CLIP_GLOBAL], features[CLIP_DENSE])
    with torch.no_grad():
        text = side.prompted_text(features[CLIP_GLOBAL], features[CLIP_DENSE])
        context = side.context_decoder(side.context_queries.expand(2, -1, -1), memory)
        tokens = side._tokens
        embeddings = encoder.clip_text.token_embedding(tokens.ids)
        for b in range(2):
            prompts = torch.cat([embeddings[:, :1], context[b].expand(3, -1, -1), embeddings[:, 1 + encoder.n_context:]], dim=1)
            torch.testing.assert_close(text[b], encoder.clip_text(prompts, tokens.eot_index, 0), rtol=1e-5, atol=1e-5)


def test_pre_gradients_reach_queries_and_decoder_not_the_frozen_text_tower():
    model = tiny_model("pre", config_file="COCO/retinanet_denseclip_R50_FPN_1x.yaml")
    model.train()
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model(synthetic_batch(num_classes=3))
    sum(losses.values()).backward()
    side = model.text_side
    assert side.context_queries.grad is not None and side.context_queries.grad.abs().sum() > 0
    for name, param in side.context_decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    tower = list(side.prompt_encoder.clip_text.parameters())
    assert tower and all(not p.requires_grad and p.grad is None for p in tower)
    groups = model_parameter_groups(model)
    assert [n for n, _ in groups["text_prompt"]] == ["text_side.context_queries"]


@pytest.mark.parametrize("training", [True, False])
def test_pre_runs_the_text_tower_once_per_forward_on_b_x_k_sequences(training):
    model = tiny_model("pre").train(training)
    calls = []
    model.text_side.prompt_encoder.clip_text.register_forward_hook(lambda m, args, out: calls.append((args[0].shape[0], out.shape)))
    features = image_features(model, batch=2)
    for _ in range(2):
        model.text_side(features)
    dim = features[CLIP_DENSE].shape[1]
    assert calls == [(2 * 3, (2 * 3, dim))] * 2  # one pass per forward, never K sequences alone


def test_post_and_none_run_the_text_tower_once_per_vocabulary_at_inference():
    for mode in ("post", "none"):
        model = tiny_model(mode).eval()
        calls = []
        model.text_side.prompt_encoder.clip_text.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
        features = image_features(model)
        for _ in range(2):
            model.text_side(features)
        assert calls == [3], mode


def test_pre_vocabulary_swap_and_checkpoint_round_trip(tmp_path):
    trained = tiny_model("pre", ["cat", "dog", "cup"], seed=0).eval()
    AtomicDetectionCheckpointer(trained, str(tmp_path)).save("model_final")
    images = ImageList(torch.randn(1, 3, 96, 128), [(96, 128)])
    with torch.no_grad():
        expected = trained.extract_features(images)
    # Another seed, another order: the weights load, per-class columns matched by name.
    loaded = tiny_model("pre", ["cup", "cat", "dog"], seed=1).eval()
    AtomicDetectionCheckpointer(loaded).load(str(tmp_path / "model_final.pth"))
    torch.testing.assert_close(loaded.text_side.context_queries, trained.text_side.context_queries)
    with torch.no_grad():
        got = loaded.extract_features(images)
    order = [2, 0, 1]  # cup, cat, dog in the trained model's order
    torch.testing.assert_close(got.text_embeddings, expected.text_embeddings[:, order])
    torch.testing.assert_close(got.score_map, expected.score_map[:, order])
    # Swap at inference: the text tower encodes the new names per image, the heads follow.
    loaded.set_vocabulary(["tree", "cat"])
    with torch.no_grad():
        swapped = loaded.extract_features(images)
        [output] = loaded([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    assert swapped.text_embeddings.shape[1] == 2 and swapped.score_map.shape[1] == 2
    torch.testing.assert_close(swapped.text_embeddings[:, 1], expected.text_embeddings[:, 0], rtol=1e-4, atol=1e-4)
    assert output["instances"].pred_classes.max().item() < 2 if len(output["instances"]) else True


@pytest.mark.parametrize("opts, message", [
    (["MODEL.DENSECLIP.PROMPTING", "middle"], "MODEL.DENSECLIP.PROMPTING must be one of"),
    (["MODEL.DENSECLIP.PROMPTING", "pre", "MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED", False], "CONTEXT_DECODER.ENABLED"),
    (["MODEL.DENSECLIP.PROMPTING", "pre", "MODEL.DENSECLIP.PROMPT", "template", "MODEL.DENSECLIP.N_CONTEXT", 0],
     "MODEL.DENSECLIP.PROMPT must be 'learnable'"),
])
def test_bad_prompting_settings_are_one_clear_error(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(load_config(LANGUAGE_RETINANET, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", ["cat"], *opts]))


def test_context_decoder_disabled_is_prompting_none():
    model = tiny_model("post", ("cat",), 0, LANGUAGE_RETINANET, "MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED", False)
    assert model.text_side.prompting == "none" and model.text_side.context_decoder is None


@pytest.mark.parametrize("mode", ["pre", "none"])
def test_each_variant_trains_a_few_steps_on_a_detection_batch(mode):
    model = tiny_model(mode, ("class 0", "class 1", "class 2"), 0, "COCO/retinanet_denseclip_R50_FPN_1x.yaml")
    history = train_steps(model, synthetic_batch(num_classes=3, size=(96, 128)), steps=4, lr=1e-4)
    assert all(np.isfinite(v) for step in history for v in step.values())
    assert sum(history[-1].values()) < 0.97 * sum(history[0].values())  # measured: pre 3.05 -> 2.77, none 3.83 -> 2.90


@pytest.mark.parametrize("mode", ["pre", "none"])
def test_each_variant_trains_and_evaluates_on_the_synthetic_segmentation_config(mode, make_cfg, tmp_path):
    opts = [
        "DATASETS.SYNTHETIC.ROOT", str(tmp_path / "shapes"), "DATASETS.SYNTHETIC.NUM_TRAIN", "2",
        "DATASETS.SYNTHETIC.NUM_VAL", "1", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "256", "TEST.SEM_SEG.CROP_SIZE", "(64, 64)", "TEST.SEM_SEG.STRIDE", "(43, 43)",
        "MODEL.CLIP.POS_EMBED_GRID", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.DENSECLIP.PROMPTING", mode,
    ]
    cfg = make_cfg("Synthetic/semantic_fpn_denseclip_RN-tiny_shapes.yaml", opts)
    try:
        register_synthetic_from_config(cfg)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        register_synthetic_dataset()
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    assert all(np.isfinite(r["total_loss"]) for r in records if "total_loss" in r)
    assert any("sem_seg/mIoU" in r for r in records)
    saved = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert ("text_side.context_queries" in saved) == (mode == "pre")
    assert not any(k.startswith("text_side.context_decoder.") for k in saved) if mode == "none" else True


def test_pre_through_the_predictor_with_a_vocabulary_swap():
    from denseclip.predictor import DenseCLIPPredictor

    cfg = load_config(LANGUAGE_RETINANET, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog"], "MODEL.DENSECLIP.PROMPTING", "pre",
                                                  "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128])
    predictor = DenseCLIPPredictor(cfg, vocabulary=["sofa", "cup", "tree"])
    assert predictor.class_names == ["sofa", "cup", "tree"]
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    maps, names = predictor.score_maps(image)
    assert names == ["sofa", "cup", "tree"] and maps.shape == (3, 90, 120)


def test_pre_in_the_web_page_with_a_vocabulary_swap(tmp_path):
    import cv2

    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession

    cfg = load_config(LANGUAGE_RETINANET, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog"], "MODEL.DENSECLIP.PROMPTING", "pre",
                                                  "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128])
    session = WebDemoSession(DenseCLIPPredictor(cfg))
    photo = str(tmp_path / "photo.png")
    cv2.imwrite(photo, (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8))
    for vocabulary in ("cat,dog", "sofa,cup,tree"):
        result = session.run(photo, vocabulary, 0.0, "score map (heat map)")
        assert result.ok, result.message
        assert sorted(result.score_map_classes) == sorted(vocabulary.split(","))
    assert session.class_names == ["sofa", "cup", "tree"]
