"""Config building for the command lines: ``get_cfg`` + ``add_denseclip_config`` + file +
overrides, with errors that name the file or the overrides, the CPU fallback of MODEL.DEVICE, the
lr steps of SOLVER.STEP_FRACTIONS, and keys the models would ignore rejected. Nothing else: datasets
are registered by explicit calls (:func:`denseclip.data.register_datasets_from_config`) and the
vocabulary is the model's business (:func:`denseclip.modeling.vocabulary_from_config`)."""
from __future__ import annotations

import difflib
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog

from ..config import add_denseclip_config
from .optimizer import resolve_step_fractions

__all__ = ["ConfigError", "build_config", "check_dataset_names", "command_line_config", "merge_config_file", "merge_overrides"]

logger = logging.getLogger("denseclip")

# What yacs raises for an unknown key (KeyError), a value of the wrong type (ValueError), an odd
# override list (AssertionError), and what YAML parsing raises.
_CONFIG_ERRORS = (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError)

class ConfigError(ValueError):
    """A config file or override that does not fit the schema of ``add_denseclip_config``."""


# Keys this project used to define, and what replaces them: yacs would only say "Non-existent key".
REMOVED_KEYS = {
    "SOLVER.FULL_MODEL_CLIP_GRAD_NORM": (
        "SOLVER.FULL_MODEL_CLIP_GRAD_NORM was replaced by Detectron2's keys: SOLVER.CLIP_GRADIENTS.ENABLED True, "
        'SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model", SOLVER.CLIP_GRADIENTS.CLIP_VALUE <max norm> '
        "(SOLVER.CLIP_GRADIENTS.ENABLED False to turn clipping off)"
    ),
}


def _reason(e: BaseException) -> str:
    # str(KeyError) wraps the message in quotes; use the message itself.
    reason = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    hints = [hint for key, hint in REMOVED_KEYS.items() if key in reason]
    return "; ".join([reason, *hints])


def merge_config_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file`` whose errors name the file: yacs reports an unknown key or a value of
    the wrong type without saying which file (or ``_BASE_`` chain) it came from."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file '{path}' does not exist")
    try:
        cfg.merge_from_file(path)
    except _CONFIG_ERRORS as e:
        raise ConfigError(f"Invalid config file '{path}' (or one of its _BASE_ files): {_reason(e)}") from e


def merge_overrides(cfg: CfgNode, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list`` for KEY VALUE pairs, with errors that say they come from them."""
    try:
        cfg.merge_from_list(list(opts))
    except _CONFIG_ERRORS as e:
        raise ConfigError(f"Invalid config override(s) {list(opts)}: {_reason(e)}") from e


def command_line_config(args: Any) -> CfgNode:
    """The config file (``args.config_file``) and KEY VALUE overrides (``args.opts``) of a command
    line, merged into the defaults without registering datasets: what the launcher reads before
    the processes start."""
    cfg = get_cfg()
    add_denseclip_config(cfg)
    if args.config_file:
        merge_config_file(cfg, args.config_file)
    merge_overrides(cfg, args.opts or [])
    return cfg


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """{"SOLVER": {"STEPS": x}} -> {"SOLVER.STEPS": x}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _key_layers(config_file: str, opts: Sequence[str]) -> Dict[str, int]:
    """Where each key was set last: 1 = a _BASE_ file of ``config_file``, 2 = ``config_file``
    itself, 3 = the KEY VALUE overrides (absent: Detectron2's or this project's default)."""
    layers: Dict[str, int] = {}
    if config_file:
        with_bases = CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
        with open(config_file) as f:
            leaf = yaml.safe_load(f) or {}
        layers.update({k: 1 for k in _flatten(with_bases)})
        layers.update({k: 2 for k in _flatten({k: v for k, v in leaf.items() if k != "_BASE_"})})
    layers.update({k: 3 for k in list(opts)[0::2]})
    return layers


_LAYER_NAMES = {1: "a _BASE_ config", 2: "the config file", 3: "the command-line overrides"}


def _resolve_lr_steps(cfg: CfgNode, layers: Dict[str, int]) -> None:
    """One source of truth for the lr steps. SOLVER.STEP_FRACTIONS (fractions of MAX_ITER, what the
    configs of this project use) and SOLVER.STEPS (iterations) say the same thing: the one set
    last (overrides > config file > its _BASE_ files) wins; both in the same place is an error.
    Fractions are then written into SOLVER.STEPS, and STEP_FRACTIONS emptied, so that the config
    (and its dump) holds one schedule."""
    fractions = list(cfg.SOLVER.STEP_FRACTIONS)
    if not fractions:
        return
    steps_layer = layers.get("SOLVER.STEPS", 0)
    fractions_layer = layers.get("SOLVER.STEP_FRACTIONS", 0)
    if steps_layer and steps_layer == fractions_layer:
        raise ConfigError(
            f"SOLVER.STEPS {tuple(cfg.SOLVER.STEPS)} and SOLVER.STEP_FRACTIONS {fractions} are both set in "
            f"{_LAYER_NAMES[steps_layer]}: they are two ways to give the lr steps; keep one of them "
            "(SOLVER.STEP_FRACTIONS [] to use SOLVER.STEPS)"
        )
    if steps_layer > fractions_layer:
        logger.info(
            "SOLVER.STEPS %s (from %s) replace SOLVER.STEP_FRACTIONS %s (from %s)",
            tuple(cfg.SOLVER.STEPS), _LAYER_NAMES[steps_layer], fractions, _LAYER_NAMES.get(fractions_layer, "the defaults"),
        )
        cfg.SOLVER.STEP_FRACTIONS = []
        return
    steps = tuple(resolve_step_fractions(cfg).SOLVER.STEPS)
    logger.info("SOLVER.STEPS %s = SOLVER.STEP_FRACTIONS %s x MAX_ITER %d", steps, fractions, cfg.SOLVER.MAX_ITER)
    cfg.SOLVER.STEPS = steps
    cfg.SOLVER.STEP_FRACTIONS = []


def _check_unsupported_keys(cfg: CfgNode, opts: Sequence[str]) -> None:
    """Detectron2 keys that the CLIP models would silently ignore."""
    default_freeze_at = get_cfg().MODEL.BACKBONE.FREEZE_AT
    # DenseCLIP on another image encoder (MODEL.DENSECLIP.IMAGE_ENCODER) may read it (Detectron2's ResNets).
    clip_image_encoder = cfg.MODEL.DENSECLIP.IMAGE_ENCODER == "build_clip_backbone"
    if "clip" in cfg.MODEL.BACKBONE.NAME.lower() and clip_image_encoder and (
        cfg.MODEL.BACKBONE.FREEZE_AT != default_freeze_at or "MODEL.BACKBONE.FREEZE_AT" in list(opts)[0::2]
    ):
        raise ConfigError(
            f"MODEL.BACKBONE.FREEZE_AT ({cfg.MODEL.BACKBONE.FREEZE_AT}) is not read by the CLIP backbone "
            f"{cfg.MODEL.BACKBONE.NAME}: use MODEL.CLIP.FREEZE_AT (now {cfg.MODEL.CLIP.FREEZE_AT}; 0 trains every stage)"
        )
    if cfg.TEST.AUG.ENABLED:
        raise ConfigError(
            "TEST.AUG.ENABLED True: test-time augmentation is not supported by this project's Trainer "
            "(DenseCLIP and CLIP-baseline models); set TEST.AUG.ENABLED False"
        )


def check_dataset_names(cfg: CfgNode) -> None:
    """Raise a ConfigError naming every entry of DATASETS.TRAIN / DATASETS.TEST that is not
    registered, with registered names that look like it (a typo in DATASETS.TEST would otherwise
    surface after the whole schedule)."""
    registered = DatasetCatalog.list()
    problems: List[str] = []
    for key in ("TRAIN", "TEST"):
        for name in getattr(cfg.DATASETS, key):
            if name in registered:
                continue
            close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
            like = f"registered names like it: {', '.join(repr(c) for c in close)}" if close else (
                f"no registered name is close to it; {len(registered)} are registered, e.g. "
                + ", ".join(repr(c) for c in sorted(registered)[:5])
            )
            problems.append(f"DATASETS.{key}: dataset {name!r} is not registered ({like})")
    if problems:
        raise ConfigError(
            "; ".join(problems) + ". Register a COCO-format dataset with --dataset NAME=JSON:IMAGE_ROOT "
            "(images and label PNGs: NAME=sem_seg:IMAGE_DIR:LABEL_DIR:CLASSES_TXT) or DATASETS.REGISTER "
            "(see datasets/README.md)"
        )


def build_config(config_file: str = "", opts: Sequence[str] = (), device: Optional[str] = None) -> CfgNode:
    """An unfrozen config: defaults with the DenseCLIP keys, ``config_file``, then the KEY VALUE
    ``opts`` (:class:`ConfigError` naming the file or the overrides), then ``device`` (e.g. "cpu" for
    a ``--cpu`` flag) as MODEL.DEVICE; MODEL.DEVICE falls back to the CPU without CUDA (reported
    unless ``device`` asked for the CPU); SOLVER.STEP_FRACTIONS resolved into SOLVER.STEPS
    (:func:`_resolve_lr_steps`); keys the models would ignore rejected."""
    cfg = get_cfg()
    add_denseclip_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    merge_overrides(cfg, opts)
    if device:
        cfg.MODEL.DEVICE = device
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # Detectron2's default device is "cuda"; the CPU quickstart should not need an override.
        logger.warning("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    _resolve_lr_steps(cfg, _key_layers(config_file, opts))
    _check_unsupported_keys(cfg, opts)
    return cfg
