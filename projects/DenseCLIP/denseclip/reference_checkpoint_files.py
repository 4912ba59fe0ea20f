"""The authors' checkpoint files (:mod:`.reference_checkpoint`): reading one with errors that name the
file and what is wrong with it, the paper config of its model, and the check that a conversion gives
that model every tensor, each of its shape.

The renaming rules know which names exist, not which must: a checkpoint missing a tensor (say
``backbone.attnpool.q_proj.bias``) would convert, and loading would leave that tensor random with
only a Detectron2 warning in the log. The model of the paper config is the complete list.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Dict, Mapping, Optional

import torch

from .reference_checkpoint import ReferenceCheckpointError, ReferenceLayout, is_reference_checkpoint, reference_names
from .reference_segmentation_checkpoint import SEMANTIC_FPN

__all__ = ["check_conversion_is_complete", "checkpoint_file_problem", "paper_config_file", "read_reference_checkpoint"]

_PICKLE_PROTOCOL_2_OR_LATER = 0x80  # the first byte of torch.save's legacy (non-zip) format
_RESNET_DEPTH_OF_LAYER3_BLOCKS = {6: 50, 23: 101}


def checkpoint_file_problem(path: str, error: BaseException) -> Optional[str]:
    """Why ``torch.load(path, weights_only=True)`` raised ``error``, in words: an empty, truncated
    or foreign file. None when the file is a whole checkpoint whose contents ``weights_only``
    refused (Python objects other than tensors and containers)."""
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path) and head[:1] != bytes([_PICKLE_PROTOCOL_2_OR_LATER]):
        if head[:2] == b"PK":
            return "its zip archive is truncated or corrupt"
        return "it is not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle)"
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
        return None
    if isinstance(error, EOFError) or "failed finding central directory" in str(error):
        return "it is truncated (the file ends too early)"
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"it is truncated or corrupt ({type(error).__name__}: {first_line})"


def read_reference_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint dict of ``path`` (``{"state_dict", "meta"}``), read with ``weights_only=True``
    (a file from the internet must not run code). A missing, empty, truncated or foreign file
    raises :class:`ReferenceCheckpointError` naming it, what is wrong and what to do."""
    again = "download it again (the authors' links: raoyongming/DenseCLIP README)"
    if not os.path.exists(path):
        raise ReferenceCheckpointError(f"'{path}': no such file")
    if os.path.isdir(path):
        raise ReferenceCheckpointError(f"'{path}' is a folder: give the checkpoint file (.pth) in it")
    if os.path.getsize(path) == 0:
        raise ReferenceCheckpointError(f"'{path}' is empty (0 bytes): {again}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as e:
        reason = checkpoint_file_problem(path, e) or (
            "it holds Python objects other than tensors and plain containers, which torch.load(weights_only=True) "
            "does not unpickle; re-save c = {'state_dict': ..., 'meta': {'CLASSES': ...}} with a trusted process")
        raise ReferenceCheckpointError(f"cannot read '{path}': {reason}; {again}") from e
    if not is_reference_checkpoint(checkpoint):
        found = f"keys {sorted(checkpoint)[:6]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ReferenceCheckpointError(
            f"'{path}' is not an authors' (mmdetection / mmseg) checkpoint: expected the keys 'state_dict' and 'meta', "
            f"found {found}. A checkpoint of this project loads as MODEL.WEIGHTS without conversion"
        )
    return checkpoint


def paper_config_file(layout: ReferenceLayout, state_dict: Mapping[str, torch.Tensor]) -> str:
    """The paper config (relative to configs/) of the model a reference checkpoint holds."""
    kind = "denseclip" if layout.denseclip else "clip"
    if layout.vit:
        encoder = "ViT-B-16"
    else:
        blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r"backbone\.layer3\.(\d+)\.", k)] if m}
        depth = _RESNET_DEPTH_OF_LAYER3_BLOCKS.get(max(blocks) + 1 if blocks else 0)
        if depth is None:
            raise ReferenceCheckpointError(
                f"the image encoder has {max(blocks) + 1 if blocks else 0} blocks in backbone.layer3: not the paper's "
                "ResNet-50 (6) or ResNet-101 (23); give the config of its model with --config-file"
            )
        encoder = f"R{depth}"
    if layout.detector == SEMANTIC_FPN:
        size = "640x640" if layout.vit else "512x512"
        return f"ADE20K/semantic_fpn_{kind}_{encoder}_{size}_80k.yaml"
    return f"COCO/{layout.detector}_{kind}_{encoder}_FPN_1x.yaml"


def check_conversion_is_complete(converted: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                                 layout: ReferenceLayout, source: str = "the checkpoint") -> None:
    """Raise :class:`ReferenceCheckpointError` naming the tensors of the model (``model_state``, the
    paper model's state dict) that the converted checkpoint lacks, by their reference names, and the
    tensors whose shape differs from the model's."""
    expected = reference_names(list(model_state), layout)
    missing = [ref for ours, ref in expected.items() if ours not in converted]
    misshapen = [
        f"{expected.get(name, name)} {tuple(tensor.shape)} (expected {tuple(model_state[name].shape)})"
        for name, tensor in converted.items()
        if name in model_state and tuple(tensor.shape) != tuple(model_state[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} tensor(s) of the {layout.detector} model: {_examples(missing)}")
    if misshapen:
        problems.append(f"has {len(misshapen)} tensor(s) of another shape: {_examples(misshapen)}")
    if problems:
        raise ReferenceCheckpointError(
            f"{source} is incomplete or damaged: it {'; it '.join(problems)}. An authors' checkpoint must hold every "
            "tensor of its model: download it again"
        )


def _examples(items: list, n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")
