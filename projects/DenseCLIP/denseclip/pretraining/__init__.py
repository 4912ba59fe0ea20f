"""A small CLIP pretrained on the synthetic image-caption pairs, with open_clip's model, tokenizer and
contrastive loss (tools/pretrain_small_clip.py); its checkpoint loads through MODEL.CLIP.PRETRAINED."""
from .cache import DEFAULT_SMALL_CLIP_PATH, SmallCLIPBuild, build_or_reuse_small_clip, evaluate_checkpoint
from .small_clip import SmallCLIPSettings, create_small_clip, make_training_pairs, pretrain
from .zero_shot import ZeroShotResult, zero_shot_accuracy

__all__ = [
    "DEFAULT_SMALL_CLIP_PATH",
    "SmallCLIPBuild",
    "SmallCLIPSettings",
    "ZeroShotResult",
    "build_or_reuse_small_clip",
    "create_small_clip",
    "evaluate_checkpoint",
    "make_training_pairs",
    "pretrain",
    "zero_shot_accuracy",
]
