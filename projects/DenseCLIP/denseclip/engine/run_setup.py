"""The command line's setup of a training or evaluation run (``train_net.py``): Detectron2's argument
parser with this project's options, and the frozen config with datasets registered, names and
vocabulary checked, logging and seeding done (:func:`setup`)."""
from __future__ import annotations

import argparse
import logging
from typing import Any, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser as d2_default_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config_building import ConfigError, build_config, check_dataset_names, command_line_config
from ..data import register_datasets_from_config
from ..modeling.vocabulary import check_run_vocabulary
from .run_output import PLAIN_TEXT_LOGS

logger = logging.getLogger(__name__)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's parser (--config-file, --resume, --eval-only, --num-gpus, --num-machines,
    --machine-rank, --dist-url, trailing KEY VALUE overrides) plus ``--dataset``, ``--cpu-processes``
    and ``--onnx``."""
    parser = d2_default_argument_parser(epilog)
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=JSON:IMAGE_ROOT",
        help="register a COCO-format dataset under NAME (repeatable), or a folder of images and label PNGs with "
        "NAME=sem_seg:IMAGE_DIR:LABEL_DIR:CLASSES_TXT; use NAME in DATASETS.TRAIN/TEST",
    )
    parser.add_argument(
        "--cpu-processes",
        action="store_true",
        help="without GPUs, run --num-gpus N as N CPU processes (gloo); also implied by MODEL.DEVICE cpu",
    )
    parser.add_argument(
        "--onnx",
        metavar="DIR",
        help="with --eval-only: evaluate an export of tools/deploy/export_model.py (its folder) instead of the PyTorch model",
    )
    return parser


def cpu_processes_requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for CPU processes: ``--cpu-processes``, or MODEL.DEVICE "cpu"
    in the config file or the overrides (read without registering datasets)."""
    if getattr(args, "cpu_processes", False):
        return True
    return command_line_config(args).MODEL.DEVICE == "cpu"


class _HeldLogRecords(logging.Handler):
    """Collect the INFO+ records of a logger (and its children) inside a ``with`` block, to
    :meth:`replay` them once the logger has its handlers. Should the block raise, the warnings
    among them are emitted at once (Python's last-resort handler prints them on stderr)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self._logger = logging.getLogger(name)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "_HeldLogRecords":
        self._level = self._logger.level
        self._holding = not self._logger.handlers  # else logging is already set up: nothing to hold
        if self._holding:
            if not self._logger.isEnabledFor(logging.INFO):
                self._logger.setLevel(logging.INFO)
            self._logger.addHandler(self)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._holding:
            self._logger.removeHandler(self)
            self._logger.setLevel(self._level)
        if exc_type is not None:
            self.replay()

    def replay(self) -> None:
        for record in self.records:
            if self._logger.isEnabledFor(record.levelno):
                self._logger.handle(record)
        self.records = []


def _make_deterministic(cfg: CfgNode) -> None:
    """With a fixed SEED, ask PyTorch for deterministic kernels so that CPU runs repeat their losses
    bit for bit (``default_setup`` already seeds Python, NumPy and torch with SEED + rank). On GPU
    this is not enforced: it would need CUBLAS_WORKSPACE_CONFIG and slow training down."""
    torch.backends.cudnn.benchmark = False
    if cfg.MODEL.DEVICE == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        logger.info("SEED is set; GPU runs are seeded but not bitwise reproducible")


def setup(args: argparse.Namespace) -> CfgNode:
    """Frozen config for ``args``: :func:`build_config` (config file, KEY VALUE overrides), the
    datasets of ``--dataset``, DATASETS.REGISTER and DATASETS.SYNTHETIC registered, every name of
    DATASETS.TRAIN/TEST checked, the vocabulary checked (it can be determined and fits the datasets;
    it is not written into the config: checkpoints record it); then logging, output dir
    and seeding by ``default_setup``, plus the "denseclip" logger."""
    # Messages of these steps (dataset registration, device fallback, vocabulary, lr steps) come
    # before logging is set up: held back, then written to the console and log.txt.
    with _HeldLogRecords("denseclip") as held:
        cfg = build_config(args.config_file, args.opts or [])
        try:
            register_datasets_from_config(cfg, list(getattr(args, "dataset", None) or []))
        except (ValueError, FileNotFoundError) as e:  # the files' problems, named: no traceback
            raise ConfigError(f"dataset: {e}") from e
        check_dataset_names(cfg)
        try:
            check_run_vocabulary(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    cfg.freeze()
    logging.getLogger("detectron2").addFilter(PLAIN_TEXT_LOGS)  # the same object: added once
    default_setup(cfg, args)
    # default_setup only configures the "detectron2" and "fvcore" loggers.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="denseclip", abbrev_name="denseclip")
    held.replay()
    if cfg.SEED >= 0:
        _make_deterministic(cfg)
    return cfg
