"""Create open_clip models and load CLIP weights (pretrained tags or local files) into them."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import zipfile
from typing import Dict, Iterator

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict as open_clip_load_state_dict
from open_clip.factory import resize_pos_embed

logger = logging.getLogger(__name__)

# Entries of OpenAI's JIT archives that are hyper-parameters rather than weights.
_OPENAI_ARCHIVE_METADATA = ("input_resolution", "context_length", "vocab_size")


PACKAGED_MODEL_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")


def register_model_config(path: str) -> str:
    """Register a custom open_clip architecture JSON file; return the model name it defines.

    A bare file name (e.g. "RN-tiny.json") also resolves to the architectures shipped in
    denseclip/model_configs.
    """
    if not os.path.isfile(path) and os.path.isfile(os.path.join(PACKAGED_MODEL_CONFIGS, path)):
        path = os.path.join(PACKAGED_MODEL_CONFIGS, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIP.MODEL_CONFIG_FILE: no such file: {path}")
    with open(path) as f:
        try:
            json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"MODEL.CLIP.MODEL_CONFIG_FILE {path} is not valid JSON: {e}") from e
    open_clip.add_model_config(path)
    return os.path.splitext(os.path.basename(path))[0]


def create_clip_model(
    model_name: str,
    pretrained: str = "",
    quick_gelu: bool = True,
    model_config_file: str = "",
    pretrained_sha256: str = "",
    report_random: bool = True,
) -> torch.nn.Module:
    """Build an open_clip CLIP model and load its weights.

    Args:
        model_name: open_clip architecture name ("RN50", "RN101", "ViT-B-16", ...).
        pretrained: "" for random weights; a local file (OpenAI JIT archive, open_clip state dict,
            safetensors); or an open_clip pretrained tag such as "openai" (downloads through
            open_clip, so it needs network access or a populated cache).
        quick_gelu: use QuickGELU activations, as OpenAI's released weights require.
        model_config_file: optional JSON file defining a custom architecture named ``model_name``.
        pretrained_sha256: optional checksum the local file must have.
        report_random: log (info) that the weights are random when ``pretrained`` is empty; False
            when weights of the whole model (MODEL.WEIGHTS) are loaded next (then: debug).
    """
    if model_config_file:
        registered = register_model_config(model_config_file)
        if registered != model_name:
            raise ValueError(
                f"MODEL.CLIP.MODEL_CONFIG_FILE {model_config_file} defines model '{registered}' "
                f"but MODEL.CLIP.MODEL_NAME is '{model_name}'"
            )
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"MODEL.CLIP.MODEL_NAME '{model_name}' is not an open_clip architecture; "
            f"expected one of e.g. RN50, RN101, RN50x4, ViT-B-16"
        )

    is_file = bool(pretrained) and (os.path.sep in pretrained or os.path.isfile(pretrained)
                                    or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))
    if pretrained and not is_file:
        return _create_from_pretrained_tag(model_name, pretrained, quick_gelu)

    with without_open_clip_random_init_warning():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    if is_file:
        load_clip_weights(model, pretrained, expected_sha256=pretrained_sha256)
    else:
        # Said only where it matters: a model whose MODEL.WEIGHTS load right after has trained weights.
        logger.log(logging.INFO if report_random else logging.DEBUG,
                   "CLIP %s: random initialisation (MODEL.CLIP.PRETRAINED is empty)", model_name)
    return model


class _OpenCLIPRandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def without_open_clip_random_init_warning() -> Iterator[None]:
    """open_clip warns (on the root logger) that a model built with ``pretrained=None`` is random,
    also when this module loads weights into it right after; the caller says what is loaded."""
    root = logging.getLogger()
    quiet = _OpenCLIPRandomInitFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create_from_pretrained_tag(model_name: str, tag: str, quick_gelu: bool) -> torch.nn.Module:
    available = [t for name, t in open_clip.list_pretrained() if name == model_name]
    if tag not in available:
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED '{tag}' is neither an existing file nor an open_clip pretrained tag "
            f"for {model_name} (available tags: {available})"
        )
    try:
        return open_clip.create_model(model_name, pretrained=tag, force_quick_gelu=quick_gelu)
    except Exception as e:  # network, hub or cache errors surface with many types
        raise RuntimeError(
            f"Could not obtain CLIP weights {model_name}/{tag} through open_clip ({type(e).__name__}: {e}). "
            "Without network access, download the file elsewhere and set MODEL.CLIP.PRETRAINED to its "
            "local path (e.g. RN50.pt from OpenAI)."
        ) from e


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read CLIP weights from an OpenAI JIT archive, an open_clip checkpoint or a safetensors file.

    Plain checkpoints are read with ``weights_only=True`` (no code runs). A TorchScript archive is
    opened with ``torch.jit.load`` only to read its tensors; its code is never called.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIP.PRETRAINED: no such file: {path}")
    if _is_torchscript_archive(path):
        state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        for key in _OPENAI_ARCHIVE_METADATA:
            state_dict.pop(key, None)
        return dict(state_dict)
    try:
        return open_clip_load_state_dict(path, device="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"Could not read CLIP weights from {path}: {type(e).__name__}: {e}") from e


def file_sha256(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


ATTENTION_POOL_POSITIONS = "visual.attnpool.positional_embedding"


def resize_attention_pool_grid(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Resize (in place) a ModifiedResNet checkpoint's attention-pool positional grid to the model's,
    bicubically with antialiasing as open_clip's ``resize_pos_embed`` does for ViTs; the class
    position is kept. E.g. the small CLIP pretrained on 96-pixel images (3x3 grid) loads into RN-tiny's
    224-pixel architecture (7x7)."""
    old = state_dict.get(ATTENTION_POOL_POSITIONS)
    own = model.state_dict().get(ATTENTION_POOL_POSITIONS)
    if old is None or own is None or old.shape == own.shape or old.shape[1:] != own.shape[1:]:
        return  # nothing to resize, or a mismatch that load_clip_weights reports
    old_side, new_side = math.isqrt(old.shape[0] - 1), math.isqrt(own.shape[0] - 1)
    if old_side ** 2 != old.shape[0] - 1 or new_side ** 2 != own.shape[0] - 1:
        return
    grid = old[1:].reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1).to(old.dtype)
    state_dict[ATTENTION_POOL_POSITIONS] = torch.cat([old[:1], grid], dim=0)
    logger.info("Resized the attention pool's positional grid from %dx%d to %dx%d", old_side, old_side, new_side, new_side)


def load_clip_weights(model: torch.nn.Module, path: str, expected_sha256: str = "") -> None:
    """Load a CLIP checkpoint file into an open_clip model, strictly, with errors naming keys."""
    if expected_sha256:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise ValueError(
                f"MODEL.CLIP.PRETRAINED {path}: sha256 {actual} does not match the expected {expected_sha256}"
            )
    state_dict = read_clip_state_dict(path)
    # Checkpoints trained at another resolution carry a positional embedding of another grid size:
    # open_clip resizes a ViT's; a ModifiedResNet's attention pool grid is resized the same way here.
    resize_pos_embed(state_dict, model)
    resize_attention_pool_grid(state_dict, model)
    own = model.state_dict()
    # TorchScript archives also store non-persistent buffers (e.g. the text causal mask).
    for name, _ in model.named_buffers():
        if name not in own:
            state_dict.pop(name, None)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"CLIP weights in {path} do not fit the model architecture:"]
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:10]))
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
        lines.append("  Check MODEL.CLIP.MODEL_NAME against the checkpoint's architecture.")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
    logger.info("Loaded CLIP weights from %s", path)
