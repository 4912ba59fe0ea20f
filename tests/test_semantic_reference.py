"""The paper's segmentation configs build the authors' models (parameter counts of the paper, every
tensor of a reference checkpoint in the reference's key layout converted and loaded), and a reference
checkpoint of a small model gives, through MODEL.WEIGHTS, the logits the reference's computation
(re-expressed below from segmentation/denseclip/*.py and mmseg 0.19) gives on the same pixels."""
import runpy

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, load_config
from detectron2.modeling import build_model
from reference_layout_segmentation import segmentation_spec
from tiny_semseg import BASE_CONFIG, CLASSES, tiny_opts

from denseclip.data.ade20k_classes import ADE20K_CLASSES
from denseclip.engine import AtomicDetectionCheckpointer
from denseclip.reference_checkpoint import convert_reference_state_dict, detect_reference_layout, to_reference_state_dict

# config, reference layout, parameters of the paper (M, frozen text tower excluded), tolerance
PAPER = {
    "semantic_fpn_denseclip_R50_512x512_80k": ("denseclip_r50", 50.3, 0.01),
    "semantic_fpn_denseclip_R101_512x512_80k": ("denseclip_r101", 67.8, 0.01),
    "semantic_fpn_denseclip_ViT-B-16_640x640_80k": ("denseclip_vit", 105.3, 0.01),
    "semantic_fpn_clip_R50_512x512_80k": ("clip_r50", 31.0, 0.02),
    "semantic_fpn_clip_R101_512x512_80k": ("clip_r101", 50.0, 0.02),
    "semantic_fpn_clip_ViT-B-16_640x640_80k": ("clip_vit", 100.8, 0.02),
}


@pytest.mark.parametrize("config", list(PAPER))
def test_paper_config_is_the_authors_model(config):
    arch, paper_m, tolerance = PAPER[config]
    model = build_model(load_config(f"ADE20K/{config}.yaml", ["MODEL.DENSECLIP.CLASS_NAMES", list(ADE20K_CLASSES)]))
    tower = {id(p) for p in model.text_side.prompt_encoder.clip_text.parameters()} if hasattr(model, "text_side") else set()
    count = sum(p.numel() for p in model.parameters() if id(p) not in tower) / 1e6
    assert abs(count - paper_m) <= tolerance * paper_m, f"{count:.2f} M parameters, the paper's {paper_m} M"
    # Every tensor of the reference's checkpoint has a counterpart of the same shape, and nothing else.
    spec = {name: shape for name, shape, _ in segmentation_spec(arch)}
    converted = convert_reference_state_dict({name: torch.empty(shape) for name, shape in spec.items()})
    state = model.state_dict()
    assert set(converted) == set(state), set(converted) ^ set(state)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in converted.items())
    if arch == "denseclip_r50":
        assert len(spec) == 624  # the released RN50 file


# ------------------------------------------------------------------------------ the reference, re-expressed
def _bn(x, ref, p):
    return F.batch_norm(x, ref[f"{p}.running_mean"], ref[f"{p}.running_var"], ref[f"{p}.weight"], ref[f"{p}.bias"], False, 0.0, 1e-5)


def _reference_trunk(ref, x):
    """CLIPResNetWithAttention.forward up to layer4 (models.py:231-254): 3-conv stem + avgpool, then
    Bottlenecks whose stride is an avgpool after conv2 and before the downsample conv."""
    for i in (1, 2, 3):
        x = F.relu(_bn(F.conv2d(x, ref[f"backbone.conv{i}.weight"], stride=2 if i == 1 else 1, padding=1), ref, f"backbone.bn{i}"))
    x = F.avg_pool2d(x, 2)
    outs = []
    for stage in range(1, 5):
        b = 0
        while f"backbone.layer{stage}.{b}.conv1.weight" in ref:
            p, stride = f"backbone.layer{stage}.{b}", 2 if (stage > 1 and b == 0) else 1
            out = F.relu(_bn(F.conv2d(x, ref[f"{p}.conv1.weight"]), ref, f"{p}.bn1"))
            out = F.relu(_bn(F.conv2d(out, ref[f"{p}.conv2.weight"], padding=1), ref, f"{p}.bn2"))
            out = F.avg_pool2d(out, stride) if stride > 1 else out
            out = _bn(F.conv2d(out, ref[f"{p}.conv3.weight"]), ref, f"{p}.bn3")
            identity = x
            if f"{p}.downsample.0.weight" in ref:
                identity = F.avg_pool2d(x, stride) if stride > 1 else x
                identity = _bn(F.conv2d(identity, ref[f"{p}.downsample.0.weight"]), ref, f"{p}.downsample.1")
            x = F.relu(out + identity)
            b += 1
        outs.append(x)
    return outs


def _reference_attnpool(ref, x, heads):
    """AttentionPool2d.forward (models.py:69-101): the positional grid bilinearly resized to H x W at every call."""
    b, c, h, w = x.shape
    tokens = x.reshape(b, c, h * w).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    pos = ref["backbone.attnpool.positional_embedding"]
    g = int((pos.shape[0] - 1) ** 0.5)
    spatial = F.interpolate(pos[1:].reshape(1, g, g, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
    tokens = tokens + torch.cat([pos[:1], spatial.reshape(c, h * w).permute(1, 0)])[:, None, :]
    a = "backbone.attnpool"
    out, _ = F.multi_head_attention_forward(
        tokens, tokens, tokens, c, heads, None, torch.cat([ref[f"{a}.{n}_proj.bias"] for n in "qkv"]), None, None, False, 0.0,
        ref[f"{a}.c_proj.weight"], ref[f"{a}.c_proj.bias"], training=False, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=ref[f"{a}.q_proj.weight"], k_proj_weight=ref[f"{a}.k_proj.weight"], v_proj_weight=ref[f"{a}.v_proj.weight"],
    )
    out = out.permute(1, 2, 0)
    return out[:, :, 0], out[:, :, 1:].reshape(b, -1, h, w)


def _reference_encode_decode(ref, model, img):
    """DenseCLIP.encode_decode (denseclip.py:249-271) with mmseg's FPN and FPNHead; the text embeddings
    before refinement come from the model's prompt encoder (tested against CLIP in test_text.py), the
    context decoder module is the model's (same weights), everything else is computed here."""
    feats = _reference_trunk(ref, img)
    global_feat, visual = _reference_attnpool(ref, feats[3], model.backbone.visual.attnpool.num_heads)
    b, c, h, w = visual.shape
    context = torch.cat([global_feat.reshape(b, c, 1), visual.reshape(b, c, h * w)], dim=2).permute(0, 2, 1)
    text = model.text_side.class_text_embeddings().expand(b, -1, -1)
    text = text + ref["gamma"] * model.text_side.context_decoder(text, context)
    score = torch.einsum("bchw,bkc->bkhw", F.normalize(visual, dim=1), F.normalize(text, dim=2))
    feats[3] = torch.cat([feats[3], score], dim=1)
    neck = {k[len("neck."):]: v for k, v in ref.items() if k.startswith("neck.")}
    laterals = [F.conv2d(f, neck[f"lateral_convs.{i}.conv.weight"], neck[f"lateral_convs.{i}.conv.bias"]) for i, f in enumerate(feats)]
    for i in range(3, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    outs = [F.conv2d(x, neck[f"fpn_convs.{i}.conv.weight"], neck[f"fpn_convs.{i}.conv.bias"], padding=1) for i, x in enumerate(laterals)]
    output = None
    for level, x in enumerate(outs):
        for k in range(max(1, level)):
            p = f"decode_head.scale_heads.{level}.{2 * k if level else 0}"
            x = F.relu(_bn(F.conv2d(x, ref[f"{p}.conv.weight"], padding=1), ref, f"{p}.bn"))
            if level:
                x = F.interpolate(x, size=[2 * s for s in x.shape[-2:]], mode="bilinear", align_corners=False)
        output = x if output is None else output + F.interpolate(x, size=output.shape[2:], mode="bilinear", align_corners=False)
    output = F.conv2d(output, ref["decode_head.conv_seg.weight"], ref["decode_head.conv_seg.bias"])  # Dropout2d: eval
    return F.interpolate(output, size=img.shape[2:], mode="bilinear", align_corners=False)


def _reference_slide_inference(ref, model, img, crop, stride, num_classes):
    """DenseCLIP.slide_inference (denseclip.py:275-316), no padding of the image or the windows."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    _, _, h_img, w_img = img.shape
    preds = img.new_zeros((1, num_classes, h_img, w_img))
    count = img.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1):
        for w_idx in range(max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1):
            y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logits = _reference_encode_decode(ref, model, img[:, :, y1:y2, x1:x2])
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """A tiny DenseCLIP Semantic FPN with random weights (BN statistics too), saved in the reference's
    layout as the authors' files are, and a second model loading that file through MODEL.WEIGHTS."""
    torch.manual_seed(0)
    source = build_model(load_config(BASE_CONFIG, tiny_opts()))
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    layout = detect_reference_layout({"decode_head.conv_seg.weight": None, "gamma": None})
    ref = to_reference_state_dict(source.state_dict(), layout)
    path = tmp_path_factory.mktemp("ref") / "denseclip_fpn_tiny.pth"
    torch.save({"meta": {"CLASSES": tuple(CLASSES), "PALETTE": [[0, 0, 0]] * 3}, "state_dict": ref}, path)
    # The file's meta CLASSES are its vocabulary: per-class tensors are matched to the model's by name.
    model = build_model(load_config(BASE_CONFIG, tiny_opts(extra=["MODEL.WEIGHTS", str(path)])))
    extra = AtomicDetectionCheckpointer(model).load(str(path))
    assert extra.get("vocabulary") == CLASSES
    return source.eval(), model.eval(), ref, path


def test_tiny_reference_file_round_trips(tiny_reference):
    source, model, ref, _ = tiny_reference
    # The names the authors' RN50 file uses (RN-tiny has fewer blocks and text layers: a subset).
    assert set(ref) <= {name for name, _, _ in segmentation_spec("denseclip_r50")}
    state = model.state_dict()
    for name, tensor in source.state_dict().items():
        assert torch.equal(state[name], tensor), name
    back = to_reference_state_dict(convert_reference_state_dict(ref), detect_reference_layout(ref))
    assert all(torch.equal(back[k], v) for k, v in ref.items()) and set(back) == set(ref)


@pytest.mark.parametrize("mode, size", [("whole", (96, 128)), ("slide", (96, 128)), ("slide", (50, 150))])
def test_converted_model_gives_the_reference_logits(tiny_reference, mode, size):
    """Sizes: windows of 64 x 64 overlapping, and (50 px high) windows of 50 x 64 that are not
    multiples of 32, run unpadded by both."""
    _, model, ref, _ = tiny_reference
    model.test_mode = mode
    image = torch.randint(0, 256, (3, *size)).float()
    with torch.no_grad():
        ours = model([{"image": image, "height": 120, "width": 150}])[0]["sem_seg"]
        normalized = ((image - model.pixel_mean) / model.pixel_std)[None]
        if mode == "slide":
            theirs = _reference_slide_inference(ref, model, normalized, (64, 64), (40, 40), len(CLASSES))
        else:
            theirs = _reference_encode_decode(ref, model, normalized)
        theirs = F.interpolate(theirs, size=(120, 150), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert ours.argmax(0).unique().numel() > 1  # not a degenerate constant map


def test_conversion_tool_writes_the_same_state(tiny_reference, tmp_path, monkeypatch, capsys):
    source, _, _, path = tiny_reference
    output = tmp_path / "converted.pth"
    # The tiny model's config: the tool checks every tensor against it (by default: the paper config's model).
    monkeypatch.setattr("sys.argv", ["convert_reference_checkpoint.py", "--config-file", str(REPO_ROOT / "configs" / BASE_CONFIG),
                                     str(path), str(output), *map(str, tiny_opts())])
    runpy.run_path(str(REPO_ROOT / "tools" / "convert_reference_checkpoint.py"), run_name="__main__")
    assert "semantic_fpn DenseCLIP" in capsys.readouterr().out
    converted = torch.load(output, weights_only=True)
    assert converted["vocabulary"] == CLASSES
    model = build_model(load_config(BASE_CONFIG, tiny_opts()))
    AtomicDetectionCheckpointer(model).load(str(output))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
