"""DenseCLIP model: score maps in the FPN, pixel-text loss targets, configs (parameter counts, train
steps, inference), overfitting, and the inference-time vocabulary swap."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from denseclip.modeling import box_target_maps, pixel_text_loss, pixel_text_score_map

TINY_CLIP = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json"]
MASK_RCNN_LANGUAGE = "COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml"
RETINANET_LANGUAGE = "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml"


def tiny_opts(num_classes: int, *extra):
    names = [f"class {i}" for i in range(num_classes)]
    return TINY_CLIP + ["MODEL.DENSECLIP.CLASS_NAMES", names] + list(extra)


def train_steps(model, batch, steps: int, lr: float = 1e-3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    model.train()
    with EventStorage(0) as storage:
        for it in range(steps):
            storage.iter = it
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.mark.parametrize("num_classes", [80, 3])
@pytest.mark.parametrize("config_file", ["COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", "COCO/retinanet_denseclip_R50_FPN_1x.yaml"])
def test_score_maps_are_concatenated_into_the_fpn(config_file, num_classes, make_cfg):
    model = build_model(make_cfg(config_file, tiny_opts(num_classes))).eval()
    res5 = model.backbone.output_shape()["res5"].channels
    assert model.fpn.fpn_lateral5.in_channels == res5 + num_classes
    assert model.fpn.fpn_lateral5.weight.shape[1] == res5 + num_classes
    if "retinanet" in config_file:  # P6 is computed from res5 with its score maps
        assert model.fpn.top_block.p6.in_channels == res5 + num_classes
    with torch.no_grad():
        out = model.extract_features(ImageList(torch.randn(2, 3, 128, 192), [(128, 192)] * 2))
    score = out.score_map
    assert score.shape == (2, num_classes, 4, 6)
    assert score.abs().max() <= 1 / 0.07 + 1e-4
    assert out.text_embeddings.shape == (2, num_classes, 256)


def test_score_map_is_scaled_cosine_similarity():
    dense = torch.randn(1, 8, 2, 3)
    text = torch.randn(4, 8)
    score = pixel_text_score_map(dense, text, tau=0.07)
    expected = torch.nn.functional.cosine_similarity(dense[0, :, 1, 2][None], text, dim=1) / 0.07
    torch.testing.assert_close(score[0, :, 1, 2], expected)
    # Per-image text gives the same result when it is the same for every image.
    torch.testing.assert_close(pixel_text_score_map(dense, text[None], 0.07), score)


def test_pixel_text_targets_for_a_two_box_image():
    inst = Instances((32, 32))
    # Boxes in input pixels; at stride 4: [1, 2, 4, 5) x-range [1,4), y-range [2,5) and [4,8) x [0,2).
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 8.0, 16.0, 20.0], [16.0, 0.0, 31.0, 8.0]]))
    inst.gt_classes = torch.tensor([2, 0])
    target, weight = box_target_maps([inst], num_classes=3, size=(8, 8), stride=4)
    expected_target = torch.zeros(3, 8, 8)
    expected_target[2, 2:5, 1:4] = 1
    expected_target[0, 0:2, 4:7] = 1
    assert torch.equal(target[0], expected_target)
    union = torch.zeros(8, 8)
    union[2:5, 1:4] = 1
    union[0:2, 4:7] = 1
    for k in range(3):
        assert torch.equal(weight[0, k], union)

    # Loss = BCE over the weighted class-pixel pairs / their number; outside-box pixels ignored.
    score = torch.zeros(1, 3, 2, 2)
    loss = pixel_text_loss(score, [inst], (32, 32))
    torch.testing.assert_close(loss, torch.log(torch.tensor(2.0)))
    huge_outside = score.clone()
    assert torch.equal(pixel_text_loss(huge_outside, [inst], (32, 32)), loss)


def test_pixel_text_loss_without_boxes_is_zero():
    inst = Instances((32, 32))
    inst.gt_boxes = Boxes(torch.zeros(0, 4))
    inst.gt_classes = torch.zeros(0, dtype=torch.long)
    assert pixel_text_loss(torch.randn(1, 3, 1, 1), [inst], (32, 32)).item() == 0.0


DENSECLIP_CONFIGS = {
    # config: (paper's trainable parameter count in millions, this project's language-guided variant)
    "COCO/retinanet_denseclip_R50_FPN_1x.yaml": (60.45, RETINANET_LANGUAGE),
    "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml": (66.69, MASK_RCNN_LANGUAGE),
    "COCO/retinanet_denseclip_R101_FPN_1x.yaml": (78.00, "COCO/retinanet_denseclip_language_R101_FPN_1x.yaml"),
    "COCO/mask_rcnn_denseclip_R101_FPN_1x.yaml": (84.24, "COCO/mask_rcnn_denseclip_language_R101_FPN_1x.yaml"),
    "COCO/mask_rcnn_denseclip_ViT-B-16_FPN_1x.yaml": (None, "COCO/mask_rcnn_denseclip_ViT-B-16_FPN_1x.yaml"),
}


def trainable_millions(model) -> float:
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


def _train_and_infer(model, make_batch, steps: int) -> None:
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("text_side.prompt_encoder.clip_text.") for n in frozen)
    history = train_steps(model, make_batch(num_images=2, size=(96, 128), num_classes=80), steps=steps, lr=1e-4)
    assert {"loss_cls", "loss_box_reg", "loss_pixel_text"} <= set(history[0])
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 96, 128) * 255, "height": 192, "width": 256}])
    assert out[0]["instances"].image_size == (192, 256)


@pytest.mark.parametrize("config_file", list(DENSECLIP_CONFIGS))
def test_config_parameter_counts_train_steps_and_inference(config_file, make_cfg, make_batch):
    """The paper-named configs build the reference's model (its parameter count, from the key list
    of the authors' checkpoints: 60.45 / 66.69 / 78.00 / 84.24 M, the paper's 60 / 67 / 78 / 84);
    the language-guided variants swap only the heads' classifiers."""
    paper, language_config = DENSECLIP_CONFIGS[config_file]
    if paper is not None:
        model = build_model(make_cfg(config_file))
        assert not model.language_guided and len(model.class_names) == 80
        assert abs(trainable_millions(model) - paper) / paper < 0.01, trainable_millions(model)
        _train_and_infer(model, make_batch, steps=1)
        del model
    model = build_model(make_cfg(language_config))  # language-guided heads, COCO's 80 class names
    assert len(model.class_names) == 80 and model.language_guided
    _train_and_infer(model, make_batch, steps=1)


def _overfit(config_file, make_cfg, tmp_path, steps):
    """Train on two generated shapes images; seeded, so the loss curve is reproducible."""
    from conftest import shapes_batch

    from denseclip.data import SYNTHETIC_CLASSES

    torch.manual_seed(0)
    # Small heads keep the CPU cost low; the architecture is the same.
    opts = TINY_CLIP + ["MODEL.DENSECLIP.CLASS_NAMES", SYNTHETIC_CLASSES, "MODEL.CLIP.NORM", "BN",
                        "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 64, "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 256,
                     "MODEL.ROI_MASK_HEAD.CONV_DIM", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
                     "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200]
    model = build_model(make_cfg(config_file, opts))
    history = train_steps(model, shapes_batch(tmp_path, num_images=2, image_size=128), steps=steps, lr=1e-3)
    first = sum(history[0].values())
    last = sum(sum(h.values()) for h in history[-3:]) / 3
    return first, last, history


def test_overfitting_mask_rcnn(make_cfg, tmp_path):
    first, last, history = _overfit(MASK_RCNN_LANGUAGE, make_cfg, tmp_path, steps=40)
    assert last < 0.6 * first, (first, last)
    assert history[-1]["loss_pixel_text"] < history[0]["loss_pixel_text"]


def test_overfitting_retinanet(make_cfg, tmp_path):
    first, last, history = _overfit(RETINANET_LANGUAGE, make_cfg, tmp_path, steps=25)
    assert last < 0.6 * first, (first, last)


@pytest.mark.parametrize("config_file", [MASK_RCNN_LANGUAGE, RETINANET_LANGUAGE])
def test_vocabulary_swap_without_rebuilding(config_file, make_cfg, monkeypatch):
    opts = tiny_opts(5, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    model = build_model(make_cfg(config_file, opts)).eval()
    lateral_before = model.fpn.fpn_lateral5.weight.detach().clone()

    calls = []
    encoder = model.text_side.prompt_encoder
    original_forward = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda tokens: calls.append(tokens) or original_forward(tokens))

    model.set_vocabulary(["remote control", "class 1", "sofa"])
    image = [{"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}]
    with torch.no_grad():
        outputs = [model(image) for _ in range(3)]
    assert len(calls) == 1, "the text encoder must run once per vocabulary, not per image"
    for out in outputs:
        classes = out[0]["instances"].pred_classes
        assert len(classes) > 0 and classes.max() <= 2
    # The FPN weight of a class kept from the training vocabulary is unchanged.
    res5 = lateral_before.shape[1] - 5
    lateral = model.fpn.fpn_lateral5.weight
    assert lateral.shape[1] == res5 + 3
    torch.testing.assert_close(lateral[:, res5 + 1], lateral_before[:, res5 + 1])
    torch.testing.assert_close(lateral[:, res5], lateral_before[:, res5:].mean(dim=1))

    # Swapping back restores the trained model exactly.
    model.set_vocabulary([f"class {i}" for i in range(5)])
    torch.testing.assert_close(model.fpn.fpn_lateral5.weight, lateral_before)


def test_vocabulary_validation_and_stock_heads(make_cfg):
    model = build_model(make_cfg(MASK_RCNN_LANGUAGE, tiny_opts(3)))
    with pytest.raises(ValueError, match="empty"):
        model.set_vocabulary([])
    with pytest.raises(ValueError):
        model.set_vocabulary(["cat", "cat"])
    assert model.class_names == ["class 0", "class 1", "class 2"]  # nothing changed on error
    stock = build_model(make_cfg("COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", tiny_opts(3)))  # the paper's heads
    with pytest.raises(RuntimeError, match="language-guided"):
        stock.set_vocabulary(["cat"])


def test_template_prompt_and_no_context_decoder(make_cfg, make_batch):
    opts = tiny_opts(3, "MODEL.DENSECLIP.PROMPT", "template", "MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH", 16,
                     "MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED", False)
    model = build_model(make_cfg("COCO/retinanet_denseclip_R50_FPN_1x.yaml", opts))
    assert model.text_side.context_decoder is None
    assert not any(p.requires_grad for p in model.text_side.prompt_encoder.parameters())
    history = train_steps(model, make_batch(num_classes=3), steps=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in history[0].values())


def test_class_names_come_from_dataset_metadata(make_cfg):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("denseclip_test_vocab").set(thing_classes=["apple", "pear"])
    cfg = make_cfg("COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", TINY_CLIP + ["DATASETS.TRAIN", ("denseclip_test_vocab",)])
    model = build_model(cfg)
    assert model.class_names == ["apple", "pear"]
    assert model.roi_heads.num_classes == 2


def _first_layout_name(name: str) -> str:
    """Parameter names of the first layout, where one DenseCLIPBackbone held every part."""
    for new, old in (("backbone.", "backbone.image_encoder."), ("text_side.prompt_encoder.", "backbone.text_encoder."),
                     ("text_side.context_decoder.", "backbone.context_decoder."), ("text_side.gamma", "backbone.gamma"),
                     ("fpn.", "backbone.fpn.")):
        if name.startswith(new):
            return old + name[len(new):]
    return name


@pytest.mark.parametrize("config_file", ["COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", "COCO/retinanet_denseclip_R50_FPN_1x.yaml"])
def test_checkpoint_of_the_first_layout_loads(config_file, make_cfg, tmp_path):
    from denseclip.engine import AtomicDetectionCheckpointer

    source = build_model(make_cfg(config_file, tiny_opts(3)))
    old_state = {_first_layout_name(k): v for k, v in source.state_dict().items()}
    for key in ("backbone.image_encoder.visual.conv1.weight", "backbone.text_encoder.context", "backbone.gamma",
                "backbone.context_decoder.out_proj.1.weight", "backbone.fpn.fpn_lateral5.weight"):
        assert key in old_state, key
    path = tmp_path / "first_layout.pth"
    torch.save({"model": old_state}, path)

    torch.manual_seed(1)
    target = build_model(make_cfg(config_file, tiny_opts(3)))
    assert not torch.equal(target.fpn.fpn_lateral5.weight, source.fpn.fpn_lateral5.weight)
    incompatible = AtomicDetectionCheckpointer(target)._load_model(torch.load(path))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # Plain torch loading renames too (the meta-architecture's _load_from_state_dict).
    again = build_model(make_cfg(config_file, tiny_opts(3)))
    result = again.load_state_dict(dict(old_state), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(again.text_side.gamma, source.text_side.gamma)
def test_score_maps_and_pixel_text_loss_are_float32_under_autocast():
    """Under autocast (bf16 here on CPU; fp16 on CUDA) the score-map logits (up to 1/tau = 14.3) and
    the pixel-text loss stay in float32, whatever the dtype of the features coming in."""
    inst = Instances((64, 64))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 8.0, 40.0, 60.0]]))
    inst.gt_classes = torch.tensor([1])
    dense = torch.randn(1, 16, 2, 2, dtype=torch.bfloat16)
    text = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = pixel_text_score_map(dense, text, tau=0.07)
        loss = pixel_text_loss(score.bfloat16(), [inst], (64, 64))
        matmul = dense.float().flatten(2).transpose(1, 2) @ text.float().t()  # what autocast does otherwise
    assert matmul.dtype == torch.bfloat16
    assert score.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(score, pixel_text_score_map(dense.float(), text.float(), tau=0.07))
    assert torch.isfinite(loss)


def test_pixel_text_targets_match_a_per_box_fill():
    """The vectorised targets equal filling each (stride-truncated, clamped) box in a loop."""
    g = torch.Generator().manual_seed(0)
    instances = []
    for n in (0, 1, 7):
        inst = Instances((64, 96))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([96.0, 64.0])
        wh = torch.rand(n, 2, generator=g) * 50
        inst.gt_boxes = Boxes(torch.cat([xy - 5, xy + wh], dim=1))  # some boxes cross the borders
        inst.gt_classes = torch.randint(0, 4, (n,), generator=g)
        instances.append(inst)
    target, weight = box_target_maps(instances, num_classes=4, size=(16, 24), stride=4)
    for i, inst in enumerate(instances):
        expected_target, expected_union = torch.zeros(4, 16, 24), torch.zeros(16, 24)
        boxes = (inst.gt_boxes.tensor / 4).long()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 23)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 15)
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), inst.gt_classes.tolist()):
            expected_target[label, y0:y1, x0:x1] = 1
            expected_union[y0:y1, x0:x1] = 1
        assert torch.equal(target[i], expected_target)
        assert all(torch.equal(weight[i, k], expected_union) for k in range(4))
