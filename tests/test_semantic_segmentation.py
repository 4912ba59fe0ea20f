"""DenseCLIP Semantic FPN on CPU with tiny models: Detectron2's SemanticSegmentor contract (losses,
gradients, outputs the evaluator and Visualizer read), sliding-window and multi-scale inference, the
language-guided variant's vocabulary swap, the ViT pyramid, and the segmentation recipe (poly
schedule, parameter groups)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_config
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tiny_semseg import BASE_CONFIG, CLASSES, label_batch, tiny_opts

from denseclip.engine import build_lr_scheduler, build_optimizer
from denseclip.engine.poly_schedule import WarmupPolyLR
from denseclip.modeling import semantic_cross_entropy, sliding_windows

TEST_OPTIONS = ("test_mode", "crop_size", "stride", "test_scales", "test_flip")


@pytest.fixture(scope="module")
def shared_tiny_model():
    torch.manual_seed(0)
    return build_model(load_config(BASE_CONFIG, tiny_opts()))


@pytest.fixture
def tiny_model(shared_tiny_model):
    """The module's tiny model, its test options (TEST.SEM_SEG) restored after each test."""
    saved = {k: getattr(shared_tiny_model, k) for k in TEST_OPTIONS}
    yield shared_tiny_model
    for k, v in saved.items():
        setattr(shared_tiny_model, k, v)


def test_training_returns_both_losses_with_gradients_everywhere_but_the_text_tower(tiny_model):
    model = tiny_model.train()
    losses = model(label_batch())
    assert set(losses) == {"loss_sem_seg", "loss_pixel_text"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    tower = {id(p) for p in model.text_side.prompt_encoder.clip_text.parameters()}
    for name, param in model.named_parameters():
        # (CLIP's random init zeroes each block's last BN: the convs before it start without gradient.)
        assert (param.grad is None) == (id(param) in tower), name
    for name in ("backbone.visual.conv1.weight", "backbone.visual.attnpool.positional_embedding", "text_side.gamma",
                 "text_side.prompt_encoder.context", "text_side.context_decoder.decoder.0.norm1.weight",
                 "fpn.fpn_lateral5.weight", "sem_seg_head.p5.0.weight", "sem_seg_head.predictor.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_pixel_text_loss_is_the_identity_head():
    """cross-entropy of cosine / tau (upsampled bilinearly) against the labels, weight 0.4, averaged
    over all pixels like the rest of mmseg 0.19's losses."""
    model = build_model(load_config(BASE_CONFIG, tiny_opts())).train()
    batch = label_batch(seed=1)
    torch.manual_seed(0)
    losses = model(batch)
    torch.manual_seed(0)  # same dropout masks
    images = torch.stack([(x["image"] - model.pixel_mean) / model.pixel_std for x in batch])
    dense = model.extract_features(ImageList(images, [(64, 96)] * 2))
    targets = torch.stack([x["sem_seg"] for x in batch])
    logits = F.interpolate(dense.score_map / 0.07, size=(64, 96), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, targets, ignore_index=255, reduction="sum") / targets.numel() * 0.4
    torch.testing.assert_close(losses["loss_pixel_text"], expected, rtol=1e-5, atol=1e-6)


def test_score_maps_are_sigmoid_of_cosine_over_tau(tiny_model):
    """The segmentation models fuse the raw cosines (FUSE_RAW_SCORES); their "score_maps" output is
    still sigmoid(cosine / tau), as the detectors' (not sigmoid of the raw cosine, flat near 0.5)."""
    model = tiny_model.eval()
    batch = label_batch(num_images=1, size=(64, 64))
    model.return_score_maps = True
    try:
        with torch.no_grad():
            maps = model(batch)[0]["score_maps"]
            images = torch.stack([(x["image"] - model.pixel_mean) / model.pixel_std for x in batch])
            cosine = model.extract_features(ImageList(images, [(64, 64)])).score_map
    finally:
        model.return_score_maps = False
    assert model.text_side.raw_score_map and cosine.abs().max() <= 1.0 + 1e-5
    expected = F.interpolate(cosine / 0.07, size=(64, 64), mode="bilinear", align_corners=False)[0].sigmoid()
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


def test_cross_entropy_averages():
    logits, targets = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    targets[0, :2] = 255
    valid = semantic_cross_entropy(logits, targets, 255, "valid_pixels")
    every = semantic_cross_entropy(logits, targets, 255, "all_pixels")
    torch.testing.assert_close(every, valid * (targets != 255).sum() / targets.numel())
    with pytest.raises(ValueError, match="LOSS_AVERAGE"):
        semantic_cross_entropy(logits, targets, 255, "mean")


def test_loss_goes_down():
    torch.manual_seed(0)
    cfg = load_config(BASE_CONFIG, tiny_opts(extra=["SOLVER.BASE_LR", 1e-3, "SOLVER.WARMUP_ITERS", 0]))
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    batch = label_batch()
    first = None
    for _ in range(8):
        loss = model(batch)["loss_sem_seg"]
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model(batch)["loss_sem_seg"]) < 0.9 * first


def test_inference_outputs_logits_at_the_requested_size(tiny_model):
    model = tiny_model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.rand(3, 64, 96) * 255, "height": 50, "width": 70}, {"image": torch.rand(3, 96, 64) * 255}])
    assert outputs[0]["sem_seg"].shape == (3, 50, 70) and outputs[1]["sem_seg"].shape == (3, 96, 64)


def test_sliding_windows_clip_at_the_border_without_padding():
    windows = sliding_windows(100, 700, (512, 512), (341, 341))
    assert windows == [(0, 100, 0, 512), (0, 100, 188, 700)]  # 100 px high: never padded to 512
    covered = torch.zeros(600, 900)
    for y1, y2, x1, x2 in sliding_windows(600, 900, (512, 512), (341, 341)):
        assert (y2 - y1, x2 - x1) == (512, 512)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_the_torch_free_runner_slides_the_same_windows():
    """tools/deploy/onnx_infer.py keeps its own copy of sliding_windows (it may import neither torch
    nor this package): the two must give the same windows."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "deploy" / "onnx_infer.py"
    spec = importlib.util.spec_from_file_location("onnx_infer_windows", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    for height, width in ((100, 700), (600, 900), (512, 512), (513, 1), (64, 96), (1000, 333)):
        for crop, stride in (((512, 512), (341, 341)), ((64, 64), (40, 40)), ((640, 640), (426, 426)), ((64, 96), (64, 96))):
            assert runner.sliding_windows(height, width, crop, stride) == sliding_windows(height, width, crop, stride)


def test_slide_equals_whole_when_the_window_covers_the_image(tiny_model):
    model = tiny_model.eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        model.test_mode = "whole"
        whole = model(inputs)[0]["sem_seg"]
        model.test_mode, model.crop_size = "slide", (128, 128)
        slide = model(inputs)[0]["sem_seg"]
        model.crop_size = (64, 64)
        overlapping = model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)
    assert not torch.allclose(overlapping, whole, atol=1e-3)  # 64 px windows see less context


def test_multi_scale_flip_averages_probabilities(tiny_model):
    model = tiny_model.eval()
    model.test_mode, model.test_scales, model.test_flip = "whole", (0.5, 1.0, 1.5), True
    with torch.no_grad():
        probabilities = model([{"image": torch.rand(3, 64, 96) * 255, "height": 32, "width": 48}])[0]["sem_seg"]
    assert probabilities.shape == (3, 32, 48)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(32, 48))


def test_outputs_feed_detectron2_evaluator_and_visualizer(tiny_model, tmp_path):
    records = []
    for i in range(2):
        image = np.random.RandomState(i).randint(0, 256, (64, 96, 3)).astype(np.uint8)
        label = image.argmax(2).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.jpg")
        Image.fromarray(label).save(tmp_path / f"{i}.png")
        records.append({"file_name": str(tmp_path / f"{i}.jpg"), "sem_seg_file_name": str(tmp_path / f"{i}.png"),
                        "height": 64, "width": 96})
    name = "test_semseg_tiny_eval"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")
    try:
        evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
        evaluator.reset()
        model = tiny_model.eval()
        with torch.no_grad():
            for record in records:
                image = torch.as_tensor(np.asarray(Image.open(record["file_name"])).transpose(2, 0, 1).copy()).float()
                inputs = [{**record, "image": image}]
                outputs = model(inputs)
                evaluator.process(inputs, outputs)
        results = evaluator.evaluate()["sem_seg"]
        assert 0 <= results["mIoU"] <= 100 and "pACC" in results
        drawn = Visualizer(np.zeros((64, 96, 3), np.uint8), MetadataCatalog.get(name)).draw_sem_seg(
            outputs[0]["sem_seg"].argmax(0)).get_image()
        assert drawn.shape == (64, 96, 3) and drawn.any()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_language_guided_vocabulary_swap():
    torch.manual_seed(0)
    model = build_model(load_config("Base-DenseCLIP-Language-SemanticFPN.yaml", tiny_opts())).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        before = model(inputs)[0]["sem_seg"]
        model.set_vocabulary(["wall", "sky", "floor", "grass"])
        swapped = model(inputs)[0]["sem_seg"]
        model.set_vocabulary(CLASSES)
        after = model(inputs)[0]["sem_seg"]
    assert before.shape[0] == 3 and swapped.shape[0] == 4
    torch.testing.assert_close(after, before)
    stock = build_model(load_config(BASE_CONFIG, tiny_opts()))
    with pytest.raises(RuntimeError, match="language-guided"):
        stock.set_vocabulary(["wall"])


def test_vit_reference_pyramid_and_positions(tmp_path):
    """The reference's ViT backbone on a 4-block ViT: level i from block VIT_OUT_INDICES[i], GroupNorm +
    full-width deconvolutions, 2 x 2 positional grid resized to each input, class embedding added twice."""
    config = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    path = tmp_path / "ViT-tiny.json"
    path.write_text(json.dumps(config))
    opts = tiny_opts(extra=["MODEL.CLIP.MODEL_NAME", "ViT-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", str(path),
                            "MODEL.CLIP.VIT_PYRAMID", "denseclip", "MODEL.CLIP.VIT_OUT_INDICES", [0, 1, 2, 3],
                            "MODEL.CLIP.DROP_PATH_RATE", 0.1, "MODEL.CLIP.VIT_CLASS_EMBED_TWICE", True,
                            "MODEL.DENSECLIP.SCORE_MAP_FEATURE", "res4"])
    model = build_model(load_config(BASE_CONFIG, opts))
    backbone, visual = model.backbone, model.backbone.visual
    assert visual.positional_embedding.shape == (5, 64)
    assert model.fpn.fpn_lateral4.weight.shape[1] == 64 + 3  # score maps at stride 16
    losses = model.train()(label_batch())
    sum(losses.values()).backward()
    assert visual.transformer.resblocks[3].ls_1[1].drop_prob == pytest.approx(0.1)
    backbone.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = backbone(x)
        tokens = visual.conv1(x).flatten(2).transpose(1, 2)
        pos = F.interpolate(visual.positional_embedding[1:].reshape(1, 2, 2, 64).permute(0, 3, 1, 2), size=(4, 6),
                            mode="bilinear").reshape(64, 24).t()
        cls = visual.class_embedding
        tokens = torch.cat([cls.expand(1, 1, 64), tokens], 1) + torch.cat([visual.positional_embedding[:1] + cls, pos])
        tokens = visual.ln_pre(tokens)
        for block in visual.transformer.resblocks[:3]:
            tokens = block(tokens)
        expected = F.group_norm(tokens[:, 1:].transpose(1, 2).reshape(1, 64, 4, 6), 1,
                                backbone.pyramid.res4.weight, backbone.pyramid.res4.bias)
    torch.testing.assert_close(features["res4"], expected, atol=1e-5, rtol=1e-5)
    assert {k: tuple(v.shape[1:]) for k, v in features.items() if k.startswith("res")} == {
        "res2": (64, 16, 24), "res3": (64, 8, 12), "res4": (64, 4, 6), "res5": (64, 2, 3)}


def test_poly_schedule_is_mmcv_poly_with_linear_warmup():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 1e-4}, {"params": params[1:], "lr": 1e-5}])
    scheduler = WarmupPolyLR(optimizer, 80000, power=0.9, min_lr=1e-6, warmup_iters=1500, warmup_factor=1e-6)
    seen = {}
    for it in range(3001):
        if it in (0, 750, 1499, 1500, 3000):
            seen[it] = [g["lr"] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    for it, lrs in seen.items():
        for base, lr in zip((1e-4, 1e-5), lrs):
            regular = (base - 1e-6) * (1 - it / 80000) ** 0.9 + 1e-6  # mmcv PolyLrUpdaterHook
            k = (1 - it / 1500) * (1 - 1e-6) if it < 1500 else 0.0  # mmcv linear warm-up
            assert lr == pytest.approx(regular * (1 - k), rel=1e-9), (it, base)


def test_recipe_parameter_groups(tiny_model):
    cfg = load_config(BASE_CONFIG, tiny_opts())
    optimizer = build_optimizer(cfg, tiny_model)
    assert isinstance(build_lr_scheduler(cfg, optimizer), WarmupPolyLR)
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    tower = {id(p) for p in tiny_model.text_side.prompt_encoder.clip_text.parameters()}
    for name, param in tiny_model.named_parameters():
        if id(param) in tower:
            assert id(param) not in by_id, name  # frozen, not optimised
            continue
        group = by_id[id(param)]
        assert group["initial_lr"] == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
        exempt = ".context_decoder.decoder." in name and ".norm" in name
        assert group["weight_decay"] == (0.0 if exempt else 1e-4), name


def test_checkpoint_classes_are_matched_by_name(tiny_model, tmp_path):
    """A checkpoint records its class names; a model listing them in another order gets its per-class
    tensors (classifier rows, the FPN lateral's score-map columns) by name: the same maps, reordered."""
    from denseclip.engine import AtomicDetectionCheckpointer

    AtomicDetectionCheckpointer(tiny_model.eval(), str(tmp_path)).save("tiny")
    reordered = build_model(load_config(BASE_CONFIG, tiny_opts(classes=CLASSES[::-1]))).eval()
    AtomicDetectionCheckpointer(reordered).load(str(tmp_path / "tiny.pth"))
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        torch.testing.assert_close(reordered(inputs)[0]["sem_seg"], tiny_model(inputs)[0]["sem_seg"].flip(0), atol=1e-5, rtol=1e-5)
