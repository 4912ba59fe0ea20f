"""ImageNet weights for a non-CLIP bottom-up (MODEL.ANY_BACKBONE.WEIGHTS), from the files users have:
torchvision ResNet state dicts, Detectron2 / Caffe2 ``.pkl`` files (Detectron2's model zoo
``ImageNetPretrained`` files, or the output of Detectron2's ``tools/convert-torchvision-to-d2.py``),
and timm checkpoints.

Every file is checked against the bottom-up: a wrong or incomplete file is an error that names the
keys and shapes that do not fit, not a partly random backbone.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, List

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.utils.file_io import PathManager
from timm.models import load_state_dict as timm_load_state_dict

logger = logging.getLogger(__name__)

WEIGHTS_KEY = "MODEL.ANY_BACKBONE.WEIGHTS"
# Entries of ImageNet files that the bottom-up has no use for: the classifier, and BatchNorm's
# batch counter where the model's norm (FrozenBN) has none.
_CLASSIFIER = re.compile(r"^(fc|fc1000|head|classifier|pred)([._]|$)")
# Statistics that Caffe2 ImageNet files fold into the affine parameters (the model keeps mean 0, var 1).
_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_to_detectron2(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names -> Detectron2 ResNet names (what Detectron2's
    tools/convert-torchvision-to-d2.py does): layer{i} -> res{i+1}, the stem's conv1/bn1 ->
    stem.conv1(.norm), bn{k} -> conv{k}.norm, downsample.0/.1 -> shortcut(.norm); the classifier dropped."""
    converted = {}
    for key, value in state_dict.items():
        if _CLASSIFIER.match(key):
            continue
        new = key
        if not key.startswith("layer"):
            new = "stem." + new.replace("bn1.", "conv1.norm.")
        else:
            new = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", new)
            new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
            new = new.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        converted[new] = value
    return converted


def resolve_weights_file(path: str) -> str:
    """A local path for ``path`` (``detectron2://`` and URLs are fetched and cached by Detectron2's
    PathManager); a missing file is a FileNotFoundError naming the key."""
    try:
        local = PathManager.get_local_path(path)
    except Exception as e:  # network errors of URL handlers come with many types
        raise FileNotFoundError(
            f"{WEIGHTS_KEY}: could not fetch {path} ({type(e).__name__}: {e}); download it and give the local path"
        ) from e
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{WEIGHTS_KEY}: no such file: {path}")
    return local


def read_weights(path: str, bottom_up: nn.Module) -> Dict:
    """Detectron2's checkpoint dict ({"model": ..., "matching_heuristics": ...}) of a weights file,
    its names converted to the bottom-up's where the file is torchvision's or timm's."""
    local = resolve_weights_file(path)
    try:
        if local.endswith(".pkl"):
            # Detectron2's reader: Caffe2 blobs get its name-matching heuristics, its own files keep their flags.
            return DetectionCheckpointer(bottom_up)._load_file(local)
        state_dict = timm_load_state_dict(local, use_ema=True, device="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{WEIGHTS_KEY}: could not read {path} ({type(e).__name__}: {e})") from e
    if hasattr(bottom_up, "convert_checkpoint"):
        state_dict = bottom_up.convert_checkpoint(state_dict)
    elif isinstance(bottom_up, ResNet) and "layer1.0.conv1.weight" in state_dict:
        state_dict = torchvision_resnet_to_detectron2(state_dict)
    return {"model": state_dict}


def _format_problems(path: str, bottom_up: nn.Module, missing: List[str], unexpected: List[str],
                     shapes: List[str]) -> str:
    lines = [f"{WEIGHTS_KEY} {path} does not fit the bottom-up ({type(bottom_up).__name__}):"]
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:10]))
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
    lines.append("  Check the architecture (MODEL.RESNETS.DEPTH, MODEL.TIMM.MODEL_NAME) against the file's.")
    return "\n".join(lines)


def load_bottom_up_weights(bottom_up: nn.Module, path: str) -> None:
    """Load ImageNet weights into ``bottom_up``; every parameter must be in the file with its shape."""
    checkpoint = read_weights(path, bottom_up)
    # Detectron2's loading: numpy arrays, Caffe2 names and its name-matching heuristics where the file asks.
    incompatible = DetectionCheckpointer(bottom_up)._load_model(checkpoint)
    shapes = [f"{key}: file {tuple(ckpt)} vs model {tuple(model)}" for key, ckpt, model in incompatible.incorrect_shapes]
    mismatched = {key for key, _, _ in incompatible.incorrect_shapes}
    statistics = [k for k in incompatible.missing_keys if k.endswith(_NORM_STATISTICS)]
    missing = [k for k in incompatible.missing_keys if k not in mismatched and k not in statistics]
    unexpected = [k for k in incompatible.unexpected_keys
                  if not _CLASSIFIER.match(k) and not k.endswith("num_batches_tracked")]
    if shapes or missing or unexpected:
        raise ValueError(_format_problems(path, bottom_up, missing, unexpected, shapes))
    if statistics:
        logger.info("%s %s has no BatchNorm statistics (%d tensors, e.g. %s): kept at mean 0, variance 1, "
                    "as Caffe2 files fold them into the affine parameters", WEIGHTS_KEY, path, len(statistics), statistics[0])
    logger.info("Loaded the bottom-up's ImageNet weights from %s", path)
