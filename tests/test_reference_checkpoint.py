"""The authors' (mmdetection) checkpoints in the paper configs: every tensor converted and loaded,
the converted heads computing what mmdetection computes with the same weights (anchor order, class
order, box decoding), the reference's attention-pool positions and score maps, the round trip, and
errors that name the tensor. The checkpoints are built from the reference's key list
(tests/reference_layout.py) with random values: no download."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList
from reference_layout import COCO_CLASSES, reference_checkpoint, reference_state_dict

from denseclip.backbone import CLIP_DENSE
from denseclip.engine import AtomicDetectionCheckpointer, IncompatibleCheckpointError
from denseclip.reference_checkpoint import (
    ReferenceCheckpointError,
    convert_reference_state_dict,
    detect_reference_layout,
    retinanet_anchor_permutation,
    to_reference_state_dict,
)
from denseclip.reference_checkpoint_files import check_conversion_is_complete

PAPER_CONFIGS = {
    "retinanet_denseclip": "COCO/retinanet_denseclip_R50_FPN_1x.yaml",
    "mask_rcnn_denseclip": "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml",
    "retinanet_clip": "COCO/retinanet_clip_R50_FPN_1x.yaml",
    "mask_rcnn_clip": "COCO/mask_rcnn_clip_R50_FPN_1x.yaml",
}


@pytest.fixture(scope="module")
def converted_models(tmp_path_factory):
    """Each R50 paper model with a reference checkpoint (file, as users download it) loaded."""
    from conftest import load_config

    models = {}
    for arch, config_file in PAPER_CONFIGS.items():
        path = tmp_path_factory.mktemp(arch) / f"{arch}_r50_fpn_1x_coco.pth"
        torch.save(reference_checkpoint(arch, 50), path)
        model = build_model(load_config(config_file)).eval()
        checkpointer = AtomicDetectionCheckpointer(model)
        extra = checkpointer.load(str(path))
        models[arch] = (model, reference_state_dict(arch, 50), extra)
    return models


@pytest.mark.parametrize("arch", list(PAPER_CONFIGS))
def test_every_tensor_is_converted_and_loaded(arch, converted_models):
    model, ref, extra = converted_models[arch]
    converted = convert_reference_state_dict(ref)
    state = model.state_dict()
    assert set(converted) == set(state), set(converted) ^ set(state)
    for name, tensor in converted.items():
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name
    assert extra.get("vocabulary") == list(COCO_CLASSES)  # the checkpoint's meta CLASSES
    if arch.endswith("denseclip"):
        # The reference's own (1765 x 2048) positional grid, contexts and gamma.
        assert torch.equal(model.backbone.visual.attnpool.positional_embedding, ref["backbone.attnpool.positional_embedding"])
        assert torch.equal(model.text_side.prompt_encoder.context, ref["contexts"][0])
        assert torch.equal(model.text_side.gamma, ref["gamma"])


def test_anchor_permutation_is_derived_from_both_generators():
    """mmdetection's base anchors (ratio outer, scale inner; mmdet/core/anchor/anchor_generator.py,
    gen_single_level_base_anchors) against Detectron2's cell anchors (size outer, ratio inner)."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    stride, ratios = 8, torch.tensor([0.5, 1.0, 2.0])
    scales = torch.tensor([4 * 2 ** (i / 3) for i in range(3)])  # octave_base_scale 4, 3 scales per octave
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    mmdet = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    sizes = [stride * 4 * 2 ** (i / 3) for i in range(3)]
    d2 = DefaultAnchorGenerator(sizes=[sizes], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[stride]).cell_anchors
    d2 = next(iter(d2.buffers()))
    perm = retinanet_anchor_permutation(3, 3)
    assert perm == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    torch.testing.assert_close(d2, mmdet[perm], rtol=1e-6, atol=1e-4)


def _mmdet_decode(anchors: torch.Tensor, deltas: torch.Tensor, stds, max_ratio: float = abs(math.log(16 / 1000))):
    """mmdetection 2.x DeltaXYWHBBoxCoder.decode (means 0): centre/size deltas times stds."""
    d = deltas * torch.tensor(stds)
    dw, dh = d[:, 2].clamp(-max_ratio, max_ratio), d[:, 3].clamp(-max_ratio, max_ratio)
    px, py = (anchors[:, 0] + anchors[:, 2]) * 0.5, (anchors[:, 1] + anchors[:, 3]) * 0.5
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gx, gy, gw, gh = px + pw * d[:, 0], py + ph * d[:, 1], pw * dw.exp(), ph * dh.exp()
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)


def _mmdet_level_anchors(stride: int, scales, h: int, w: int) -> torch.Tensor:
    ratios = torch.tensor([0.5, 1.0, 2.0])
    scales = torch.tensor(scales)
    h_ratios = torch.sqrt(ratios)
    ws = (stride * (1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    shifts = torch.stack([xs.reshape(-1), ys.reshape(-1)] * 2, dim=-1).float()
    return (shifts[:, None, :] + base[None]).reshape(-1, 4)  # location-major, anchor fastest


def test_retinanet_head_matches_mmdetection(converted_models):
    model, ref, _ = converted_models["retinanet_denseclip"]
    feature = torch.randn(1, 256, 5, 6)  # P3 (stride 8); the other levels only complete the input
    levels = [feature] + [torch.randn(1, 256, 3, 3) for _ in range(4)]
    with torch.no_grad():
        logits, deltas = model.head(levels)
        anchors = model.anchor_generator(levels)[0].tensor
        ours_scores = logits[0].permute(0, 2, 3, 1).reshape(-1, 80).sigmoid()
        ours_boxes = model.box2box_transform.apply_deltas(deltas[0].permute(0, 2, 3, 1).reshape(-1, 4), anchors)
        # mmdetection's RetinaHead on the raw reference weights.
        cls, reg = feature, feature
        for i in range(4):
            cls = F.relu(F.conv2d(cls, ref[f"bbox_head.cls_convs.{i}.conv.weight"], ref[f"bbox_head.cls_convs.{i}.conv.bias"], padding=1))
            reg = F.relu(F.conv2d(reg, ref[f"bbox_head.reg_convs.{i}.conv.weight"], ref[f"bbox_head.reg_convs.{i}.conv.bias"], padding=1))
        cls = F.conv2d(cls, ref["bbox_head.retina_cls.weight"], ref["bbox_head.retina_cls.bias"], padding=1)
        reg = F.conv2d(reg, ref["bbox_head.retina_reg.weight"], ref["bbox_head.retina_reg.bias"], padding=1)
        mm_scores = cls.permute(0, 2, 3, 1).reshape(-1, 80).sigmoid()
        mm_anchors = _mmdet_level_anchors(8, [4 * 2 ** (i / 3) for i in range(3)], 5, 6)
        mm_boxes = _mmdet_decode(mm_anchors, reg.permute(0, 2, 3, 1).reshape(-1, 4), (1.0, 1.0, 1.0, 1.0))
    # Pair each Detectron2 anchor with the identical mmdetection anchor: same scores, same boxes.
    match = torch.cdist(anchors, mm_anchors).argmin(dim=1)
    torch.testing.assert_close(anchors, mm_anchors[match], atol=1e-4, rtol=0)
    assert sorted(match.tolist()) == list(range(len(anchors)))
    torch.testing.assert_close(ours_scores, mm_scores[match], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_boxes, mm_boxes[match], atol=1e-3, rtol=1e-4)


def test_rpn_and_box_head_match_mmdetection(converted_models):
    model, ref, _ = converted_models["mask_rcnn_denseclip"]
    feature = torch.randn(1, 256, 4, 5)
    with torch.no_grad():
        objectness, deltas = model.proposal_generator.rpn_head([feature])
        hidden = F.relu(F.conv2d(feature, ref["rpn_head.rpn_conv.weight"], ref["rpn_head.rpn_conv.bias"], padding=1))
        mm_obj = F.conv2d(hidden, ref["rpn_head.rpn_cls.weight"], ref["rpn_head.rpn_cls.bias"])
        mm_reg = F.conv2d(hidden, ref["rpn_head.rpn_reg.weight"], ref["rpn_head.rpn_reg.bias"])
        torch.testing.assert_close(objectness[0], mm_obj, atol=1e-5, rtol=1e-4)  # identity anchor order
        torch.testing.assert_close(deltas[0], mm_reg, atol=1e-5, rtol=1e-4)

        # Shared2FCBBoxHead: softmax over 81 with background last, class-specific deltas / stds 0.1, 0.2.
        rois = torch.randn(6, 256, 7, 7)
        proposals = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0]]).repeat(6, 1))
        scores, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(rois))
        x = F.relu(F.linear(rois.flatten(1), ref["roi_head.bbox_head.shared_fcs.0.weight"], ref["roi_head.bbox_head.shared_fcs.0.bias"]))
        x = F.relu(F.linear(x, ref["roi_head.bbox_head.shared_fcs.1.weight"], ref["roi_head.bbox_head.shared_fcs.1.bias"]))
        mm_cls = F.linear(x, ref["roi_head.bbox_head.fc_cls.weight"], ref["roi_head.bbox_head.fc_cls.bias"])
        mm_reg = F.linear(x, ref["roi_head.bbox_head.fc_reg.weight"], ref["roi_head.bbox_head.fc_reg.bias"])
        torch.testing.assert_close(scores.softmax(-1), mm_cls.softmax(-1), atol=1e-6, rtol=1e-4)
        ours = model.roi_heads.box_predictor.box2box_transform.apply_deltas(box_deltas, proposals.tensor).view(6, 80, 4)
        theirs = _mmdet_decode(proposals.tensor.repeat_interleave(80, 0), mm_reg.view(-1, 4), (0.1, 0.1, 0.2, 0.2)).view(6, 80, 4)
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)


def test_attention_pool_positions_and_score_maps_are_the_references(converted_models):
    """The reference's attention pool (CLIPResNetWithAttention.attnpool): mean token first, the
    top-left H x W block of the trained 42 x 42 grid, full attention over every token; score maps =
    cosine(dense, refined text) / 0.07 concatenated after res5's 2048 channels."""
    model, ref, _ = converted_models["mask_rcnn_denseclip"]
    images = ImageList(torch.randn(1, 3, 160, 224), [(160, 224)])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        x = features["res5"]
        b, c, h, w = x.shape
        tokens = x.flatten(2).permute(2, 0, 1)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        pos = ref["backbone.attnpool.positional_embedding"]
        spatial = pos[1:].reshape(42, 42, c)[:h, :w].reshape(h * w, c)
        tokens = tokens + torch.cat([pos[:1], spatial])[:, None, :]
        out, _ = F.multi_head_attention_forward(
            tokens, tokens, tokens, c, 32, None,
            torch.cat([ref[f"backbone.attnpool.{p}_proj.bias"] for p in "qkv"]), None, None, False, 0.0,
            ref["backbone.attnpool.c_proj.weight"], ref["backbone.attnpool.c_proj.bias"], training=False,
            need_weights=False, use_separate_proj_weight=True, q_proj_weight=ref["backbone.attnpool.q_proj.weight"],
            k_proj_weight=ref["backbone.attnpool.k_proj.weight"], v_proj_weight=ref["backbone.attnpool.v_proj.weight"],
        )
        dense = out[1:].permute(1, 2, 0).reshape(b, -1, h, w)
        torch.testing.assert_close(features[CLIP_DENSE], dense, atol=1e-4, rtol=1e-4)
        out = model.extract_features(images)
        expected = torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1), F.normalize(out.text_embeddings, dim=-1)) / 0.07
        torch.testing.assert_close(out.score_map, expected, atol=1e-3, rtol=1e-4)
        fused = model.text_side.fuse(features, out.score_map)["res5"]
        assert fused.shape[1] == 2048 + 80 and torch.equal(fused[:, :2048], x)


@pytest.mark.parametrize("arch", ["retinanet_denseclip", "mask_rcnn_clip"])
def test_round_trip_is_the_identity(arch):
    ref = reference_state_dict(arch, 50)
    back = to_reference_state_dict(convert_reference_state_dict(ref), detect_reference_layout(ref))
    assert list(back) == list(ref) or set(back) == set(ref)
    for name, tensor in ref.items():
        assert torch.equal(back[name], tensor), name


def test_missing_extra_and_misshapen_tensors_are_named(converted_models, tmp_path):
    ref = reference_state_dict("retinanet_denseclip", 50)
    missing = dict(ref)
    del missing["bbox_head.retina_cls.weight"]
    with pytest.raises(ReferenceCheckpointError, match=r"lacks tensor\(s\): bbox_head\.retina_cls\.weight"):
        convert_reference_state_dict(missing)
    extra = dict(ref, **{"bbox_head.retina_iou.weight": torch.zeros(9, 256, 3, 3)})
    with pytest.raises(ReferenceCheckpointError, match=r"bbox_head\.retina_iou\.weight"):
        convert_reference_state_dict(extra)
    # A tensor of the wrong shape (a checkpoint of another class count) fails the load, by name.
    wrong = reference_checkpoint("retinanet_denseclip", 50)
    wrong["state_dict"]["neck.lateral_convs.2.conv.weight"] = torch.zeros(256, 2048 + 79, 1, 1)
    path = tmp_path / "wrong.pth"
    torch.save(wrong, path)
    model = converted_models["retinanet_denseclip"][0]
    with pytest.raises(IncompatibleCheckpointError, match=r"fpn\.fpn_lateral5\.weight: checkpoint \(256, 2127, 1, 1\)"):
        AtomicDetectionCheckpointer(model).load(str(path))


def test_incomplete_or_misshapen_checkpoint_is_refused_at_conversion_and_at_load(converted_models, tmp_path, capsys):
    """A missing tensor used to convert with exit 0 and load with that tensor left random."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import convert_reference_checkpoint

    missing = reference_checkpoint("retinanet_denseclip", 50)
    del missing["state_dict"]["backbone.attnpool.q_proj.bias"]
    source, output = tmp_path / "missing.pth", tmp_path / "converted.pth"
    torch.save(missing, source)
    with pytest.raises(SystemExit) as exit_info:
        convert_reference_checkpoint.main([str(source), str(output)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and not output.exists()
    assert "lacks 1 tensor(s) of the retinanet model: backbone.attnpool.q_proj.bias" in err
    model = converted_models["retinanet_denseclip"][0]
    with pytest.raises(IncompatibleCheckpointError, match=r"lacks 1 tensor\(s\) of the model: backbone\.attnpool\.q_proj\.bias"):
        AtomicDetectionCheckpointer(model).load(str(source))

    # A tensor of another shape: refused at conversion (not only at load), by name and both shapes.
    wrong = reference_state_dict("retinanet_denseclip", 50)
    wrong["backbone.attnpool.q_proj.bias"] = torch.zeros(7)
    with pytest.raises(ReferenceCheckpointError, match=r"backbone\.attnpool\.q_proj\.bias \(7,\) \(expected \(2048,\)\)"):
        check_conversion_is_complete(convert_reference_state_dict(wrong), model.state_dict(),
                                     detect_reference_layout(wrong), "wrong.pth")
    check_conversion_is_complete(convert_reference_state_dict(reference_state_dict("retinanet_denseclip", 50)),
                                 model.state_dict(), detect_reference_layout(wrong))  # the complete one passes
