"""Build the small CLIP once and reuse it, like the generated dataset: the checkpoint (an open_clip
state dict, what MODEL.CLIP.PRETRAINED reads) sits next to a manifest of the settings it was trained
with; a matching manifest and checksum mean "up to date". Either way the zero-shot check runs on the
checkpoint file as loaded by the project's CLIP loader, so the printed figure is always the file's."""
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..checkpoint import atomic_write
from ..clip_loading import file_sha256, load_clip_weights
from ..data.synthetic_captions import object_crops
from ..data.synthetic_classes import SYNTHETIC_GRID_CLASSES
from .small_clip import SmallCLIPSettings, create_small_clip, make_training_pairs, pretrain
from .zero_shot import ZeroShotResult, zero_shot_accuracy

logger = logging.getLogger(__name__)

# Where the quickstarts expect it (relative to the repository root, like datasets/synthetic_shapes).
DEFAULT_SMALL_CLIP_PATH = os.path.join("datasets", "small_clip", "RN-tiny_shapes.pt")
# Bump when the pretraining code changes in a way the settings do not show.
PRETRAINING_VERSION = 1


@dataclass(frozen=True)
class SmallCLIPBuild:
    path: str
    zero_shot: ZeroShotResult
    reused: bool
    seconds: float


def manifest_path(checkpoint: str) -> str:
    return os.path.splitext(checkpoint)[0] + ".json"


def _key(settings: SmallCLIPSettings) -> dict:
    return {"pretraining_version": PRETRAINING_VERSION, **settings.as_dict()}


def _is_up_to_date(checkpoint: str, settings: SmallCLIPSettings) -> bool:
    try:
        with open(manifest_path(checkpoint)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return manifest.get("settings") == _key(settings) and os.path.isfile(checkpoint) and (
        manifest.get("sha256") == file_sha256(checkpoint)
    )


def evaluate_checkpoint(checkpoint: str, settings: SmallCLIPSettings) -> ZeroShotResult:
    """Zero-shot top-1 of the checkpoint file on the held-out crops (the crop stream of the
    settings' seed: scenes never among the training pairs), at the pretraining input size."""
    model = create_small_clip(settings)
    load_clip_weights(model, checkpoint)
    crops = object_crops(settings.crops_per_class, crop_size=settings.image_size, seed=settings.seed)
    return zero_shot_accuracy(model, settings.model_name, crops, SYNTHETIC_GRID_CLASSES)


def build_or_reuse_small_clip(
    checkpoint: str = DEFAULT_SMALL_CLIP_PATH,
    settings: SmallCLIPSettings = SmallCLIPSettings(),
    log: Optional[Callable[[str], None]] = None,
    force: bool = False,
) -> SmallCLIPBuild:
    """Pretrain the small CLIP into ``checkpoint`` unless it is there with these settings (or
    ``force``); then measure its zero-shot accuracy on held-out crops."""
    log = log or logger.info
    start = time.perf_counter()
    reused = not force and _is_up_to_date(checkpoint, settings)
    if reused:
        log(f"reusing {checkpoint} (pretrained with the same settings; {manifest_path(checkpoint)})")
    else:
        log(f"generating {settings.num_pairs} image-caption pairs of {settings.image_size} px")
        images, tokens, _ = make_training_pairs(settings)
        log(f"pretraining {settings.model_name} with open_clip's ClipLoss for {settings.steps} steps")
        model, losses = pretrain(settings, images, tokens, log=log)
        os.makedirs(os.path.dirname(os.path.abspath(checkpoint)), exist_ok=True)
        state_dict = model.state_dict()
        atomic_write(checkpoint, lambda f: torch.save(state_dict, f))
        manifest = {
            "settings": _key(settings),
            "sha256": file_sha256(checkpoint),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "train_seconds": round(time.perf_counter() - start, 1),
        }
        with open(manifest_path(checkpoint), "w") as f:
            json.dump(manifest, f, indent=1)
    result = evaluate_checkpoint(checkpoint, settings)
    return SmallCLIPBuild(checkpoint, result, reused, time.perf_counter() - start)
