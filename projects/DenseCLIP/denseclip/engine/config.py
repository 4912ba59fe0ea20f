"""The one way this project builds a config: ``get_cfg`` + ``add_denseclip_config`` + file +
overrides + device fallback + datasets + vocabulary. train_net, the demo, the benchmark and the
tests all call :func:`build_config`."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import add_denseclip_config
from ..data import register_datasets_from_spec, register_synthetic_from_config
from ..modeling.vocabulary import resolve_vocabulary
from .checkpoint import checkpoint_vocabulary

__all__ = [
    "ConfigError",
    "DENSECLIP_META_ARCHITECTURES",
    "build_config",
    "merge_config_file",
    "merge_overrides",
    "resolve_config_vocabulary",
]

logger = logging.getLogger("denseclip")

# What yacs raises for an unknown key (KeyError), a value of the wrong type (ValueError), an odd
# override list (AssertionError), and what YAML parsing raises.
_CONFIG_ERRORS = (KeyError, ValueError, AssertionError, TypeError, yaml.YAMLError)

# Meta-architectures whose vocabulary (MODEL.DENSECLIP.CLASS_NAMES) is resolved into the config.
DENSECLIP_META_ARCHITECTURES = ("DenseCLIPRCNN", "DenseCLIPRetinaNet")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema of ``add_denseclip_config``."""


def _reason(e: BaseException) -> str:
    # str(KeyError) wraps the message in quotes; use the message itself.
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


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


def build_config(
    config_file: str = "",
    opts: Sequence[str] = (),
    *,
    dataset_specs: Sequence[str] = (),
    resolve_classes: bool = True,
) -> CfgNode:
    """An unfrozen config: defaults with the DenseCLIP keys, ``config_file``, then the KEY VALUE
    ``opts``; MODEL.DEVICE falls back to the CPU without CUDA; datasets of ``dataset_specs`` and
    DATASETS.REGISTER are registered (and the generated one placed per DATASETS.SYNTHETIC); for
    DenseCLIP models the vocabulary is written into MODEL.DENSECLIP.CLASS_NAMES / NUM_CLASSES."""
    cfg = get_cfg()
    add_denseclip_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    merge_overrides(cfg, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # Detectron2's default device is "cuda"; the CPU quickstart should not need an override.
        logger.warning("CUDA is not available: MODEL.DEVICE %s -> cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    specs = list(dict.fromkeys(list(dataset_specs) + list(cfg.DATASETS.REGISTER)))
    if specs:
        register_datasets_from_spec(specs)
        # Recorded in the config (and so in the run's config.yaml, which then registers them again).
        cfg.DATASETS.REGISTER = specs
    register_synthetic_from_config(cfg)
    if resolve_classes and cfg.MODEL.META_ARCHITECTURE in DENSECLIP_META_ARCHITECTURES:
        resolve_config_vocabulary(cfg)
    return cfg


def resolve_config_vocabulary(cfg: CfgNode) -> None:
    """:func:`resolve_vocabulary`; when neither the config nor its datasets name the classes, the
    names recorded in MODEL.WEIGHTS (a checkpoint of this project, or the authors')."""
    try:
        resolve_vocabulary(cfg)
    except ValueError:
        names = checkpoint_vocabulary(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS) else None
        if not names:
            raise
        logger.info("Vocabulary: the %d class names recorded in MODEL.WEIGHTS %s", len(names), cfg.MODEL.WEIGHTS)
        cfg.MODEL.DENSECLIP.CLASS_NAMES = names
        resolve_vocabulary(cfg)
