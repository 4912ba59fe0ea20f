"""RetinaNet inference path: exact top-k candidate selection (TopKCandidateDecoding) against
Detectron2's own decoding, and the language-guided head's logits against the cosine formula."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from denseclip.modeling import TopKRetinaNet, select_topk_anchors, select_topk_candidates

TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", "32"]


def reference_selection(scores: torch.Tensor, k: int, thresh: float):
    """Detectron2 v0.6's selection: every score above the threshold, fully sorted, first k."""
    keep = scores > thresh
    values, order = scores[keep].sort(descending=True)
    idxs = torch.nonzero(keep)[order[:k]]
    return values[:k], idxs[:, 0], idxs[:, 1]


@pytest.mark.parametrize("num_anchors,num_classes,k,thresh", [
    (3000, 80, 1000, 0.0),     # more candidates than k: the RetinaNet case
    (3000, 80, 1000, 0.99),    # the threshold leaves fewer than k
    (300, 80, 1000, 0.0),      # fewer anchors than k, more scores than k
    (5, 3, 1000, 0.0),         # fewer scores than k
    (2000, 1, 100, 0.5),       # one class
    (400, 10, 50, 1.5),        # nothing above the threshold
    (0, 80, 1000, 0.0),        # no anchors
])
def test_topk_selection_equals_threshold_then_full_sort(num_anchors, num_classes, k, thresh):
    g = torch.Generator().manual_seed(num_anchors + num_classes)
    # Distinct scores: the order is then unique and the comparison exact.
    scores = torch.randperm(num_anchors * num_classes, generator=g).float().div(max(num_anchors * num_classes, 1))
    scores = scores.view(num_anchors, num_classes)
    got = select_topk_candidates(scores, k, thresh)
    expected = reference_selection(scores, k, thresh)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert got[0].numel() == min(k, int((scores > thresh).sum()))


def test_topk_selection_with_tied_scores_keeps_the_same_scores():
    scores = torch.randint(0, 50, (2000, 20)).float() / 50  # many ties
    got_scores, anchors, classes = select_topk_candidates(scores, 300, 0.1)
    expected_scores, _, _ = reference_selection(scores, 300, 0.1)
    assert torch.equal(got_scores, expected_scores)
    assert torch.equal(scores[anchors, classes], got_scores)  # indices point at the scores returned


def test_anchor_candidates_are_mmdetections():
    """mmdetection 2.x (the reference): per level, the k anchors with the best max-class score, then
    every class score of those anchors above the threshold."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(500, 6, generator=g)
    got_scores, anchors, classes = select_topk_anchors(scores, 40, 0.7)
    top = scores.max(dim=1).values.argsort(descending=True)[:40]
    expected = {(int(a), int(c)) for a in top for c in range(6) if scores[a, c] > 0.7}
    assert {(int(a), int(c)) for a, c in zip(anchors, classes)} == expected
    assert torch.equal(got_scores, scores[anchors, classes])
    assert len(expected) > 40  # more pairs than k: anchors, not pairs, are counted


@pytest.mark.parametrize("score_thresh", [0.0, 0.2])
def test_topk_retinanet_detects_exactly_what_detectron2s_retinanet_detects(score_thresh, make_cfg):
    opts = TINY + ["MODEL.RETINANET.SCORE_THRESH_TEST", str(score_thresh), "TEST.DETECTIONS_PER_IMAGE", "50",
                   "MODEL.RETINANET.CANDIDATE_SELECTION", "pairs"]
    cfg = make_cfg("COCO/retinanet_clip_R50_FPN_1x.yaml", opts)
    assert cfg.MODEL.META_ARCHITECTURE == "TopKRetinaNet"
    ours = build_model(cfg).eval()
    assert isinstance(ours, TopKRetinaNet)
    image = torch.randint(0, 256, (3, 160, 224)).float()
    with torch.no_grad():
        # Random-init features are tiny and every score sits at the prior: spread the class logits
        # (std 3) so that scores are distinct and some pass the 0.2 threshold.
        features = ours.backbone(ours.preprocess_image([{"image": image}]).tensor)
        logits = ours.head.cls_score(ours.head.cls_subnet(features["p3"]))
        ours.head.cls_score.weight.mul_(3.0 / logits.std())
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock = build_model(cfg).eval()
    assert type(stock) is RetinaNet
    stock.load_state_dict(ours.state_dict())

    with torch.no_grad():
        a = ours([{"image": image}])[0]["instances"]
        b = stock([{"image": image}])[0]["instances"]
    assert 0 < len(a) <= 50
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.scores, b.scores)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_language_head_logits_are_scaled_cosines_in_detectron2s_layout(make_cfg):
    model = build_model(make_cfg("COCO/retinanet_denseclip_language_R50_FPN_1x.yaml", TINY)).eval()
    head = model.head
    features = [torch.randn(2, 32, 12, 16), torch.randn(2, 32, 6, 8)]
    text = torch.randn(2, 80, model.backbone.embed_dim)  # per-image text embeddings
    with torch.no_grad():
        logits, deltas = head(features, text)
        projected = F.normalize(head.text_proj(text), dim=-1)
        for level, feature in enumerate(features):
            n, _, h, w = feature.shape
            embed = head.cls_score(head.cls_subnet(feature)).view(n, head.num_anchors, head.cls_embed_dim, h, w)
            cosine = torch.einsum("naehw,nke->nakhw", F.normalize(embed, dim=2), projected)
            expected = (cosine * head.logit_scale() + head.cls_bias).reshape(n, -1, h, w)
            assert logits[level].shape == expected.shape == (n, head.num_anchors * 80, h, w)
            assert torch.allclose(logits[level], expected, atol=1e-5)
            assert deltas[level].shape == (n, head.num_anchors * 4, h, w)
            # Detectron2's transpose to N x HWA x K is a view: the head computed in that layout.
            assert permute_to_N_HWA_K(logits[level], 80).data_ptr() == logits[level].data_ptr()
