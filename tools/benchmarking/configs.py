"""The configs benchmarked: default list, paper figures (SPEC section 3), loading with random
weights, and what a config is (detector, CLIP model, DenseCLIP / CLIP baseline / Detectron2)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

# tools/benchmarking/configs.py -> the repository, where relative config paths are looked up.
REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

DEFAULT_CONFIGS = [
    "configs/COCO/retinanet_clip_R50_FPN_1x.yaml",
    "configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_clip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml",
    "configs/COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml",
]

# SPEC section 3 (DenseCLIP paper, mmcv get_flops at 1280x800): GFLOPs and params (M, without the
# frozen text encoder), keyed by (detector, CLIP model, variant).
PAPER = {
    ("retinanet", "RN50", "clip"): {"gflops": 265.0, "params_m": 38.0},
    ("mask_rcnn", "RN50", "clip"): {"gflops": 301.0, "params_m": 44.0},
    ("retinanet", "RN50", "denseclip"): {"gflops": 285.0, "params_m": 60.0},
    ("mask_rcnn", "RN50", "denseclip"): {"gflops": 327.0, "params_m": 67.0},
    ("retinanet", "RN101", "clip"): {"gflops": 341.0, "params_m": 57.0},
    ("mask_rcnn", "RN101", "clip"): {"gflops": 377.0, "params_m": 63.0},
    ("retinanet", "RN101", "denseclip"): {"gflops": 360.0, "params_m": 78.0},
    ("mask_rcnn", "RN101", "denseclip"): {"gflops": 399.0, "params_m": 84.0},
}
PAPER_FLOPS_SIZE = (1280, 800)
# SPEC section 7 (the paper's ADE20K table, Semantic FPN; the reference's segmentation/get_flops.py counts
# one whole 1024x1024 image): GFLOPs and params (M, without the frozen text encoder).
SEGMENTATION_FLOPS_SIZE = (1024, 1024)
PAPER.update({
    ("semantic_fpn", encoder, variant): {"gflops": gflops, "params_m": params, "flops_size": SEGMENTATION_FLOPS_SIZE}
    for encoder, variant, gflops, params in (
        ("RN50", "clip", 248.8, 31.0), ("RN50", "denseclip", 269.2, 50.3),
        ("RN101", "clip", 326.6, 50.0), ("RN101", "denseclip", 346.3, 67.8),
        ("ViT-B-16", "clip", 1037.4, 100.8), ("ViT-B-16", "denseclip", 1043.1, 105.3),
    )
})

DENSECLIP_META_ARCHS = ("DenseCLIPRCNN", "DenseCLIPRetinaNet", "DenseCLIPSemanticSegmentor")
SEMANTIC_META_ARCHS = ("CLIPSemanticSegmentor", "DenseCLIPSemanticSegmentor")


def resolve_config_path(path: str) -> Path:
    candidates = [Path(path), REPO_ROOT / path, CONFIG_DIR / path]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise FileNotFoundError(f"config file {path!r} not found (tried {', '.join(str(c) for c in candidates)})")


def load_config(path: Path, device: str, opts: Sequence[str], keep_score_thresh: bool):
    """``build_config`` with random weights (nothing downloads, nothing is read from disk) and, unless
    ``keep_score_thresh``, test score thresholds 0 (a full workload of detections)."""
    from denseclip.engine import build_config

    fixed = ["MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", ""]
    if not keep_score_thresh:
        fixed += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0]
    cfg = build_config(str(path), [*fixed, *opts])
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def describe_config(cfg) -> Dict[str, Any]:
    """Detector family, image encoder and variant (denseclip / clip / in1k / detectron2) of a config."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in SEMANTIC_META_ARCHS:
        detector = "semantic_fpn"
    else:
        detector = "retinanet" if "RetinaNet" in arch else ("mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn")
    backbone = cfg.MODEL.BACKBONE.NAME
    # DenseCLIP on an ImageNet backbone (README, "Any backbone") and its plain baseline ("in1k").
    in1k_encoder = cfg.MODEL.TIMM.MODEL_NAME if cfg.MODEL.ANY_BACKBONE.BOTTOM_UP == "build_timm_backbone" else (
        f"R{cfg.MODEL.RESNETS.DEPTH}-IN1k")
    if arch in DENSECLIP_META_ARCHS:  # MODEL.BACKBONE.NAME is the image encoder
        variant = "denseclip"
        encoder = cfg.MODEL.CLIP.MODEL_NAME if backbone == "build_clip_backbone" else in1k_encoder
    elif backbone.startswith("build_bottom_up"):
        variant, encoder = "in1k", in1k_encoder
    elif backbone.startswith("build_clip"):
        variant, encoder = "clip", cfg.MODEL.CLIP.MODEL_NAME
    elif backbone.startswith("build_resnet") or backbone.startswith("build_retinanet_resnet"):
        variant, encoder = "detectron2", f"R{cfg.MODEL.RESNETS.DEPTH}"
    else:
        variant, encoder = "other", backbone
    return {"meta_architecture": arch, "detector": detector, "variant": variant, "encoder": encoder,
            "backbone": backbone}

