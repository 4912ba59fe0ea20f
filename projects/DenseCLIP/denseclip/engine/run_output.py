"""What a run writes into its output folder: ``--eval-only`` gets a folder of its own (the training
run's config.yaml, log.txt and inference results are never overwritten or appended to), and the
log files hold plain text."""
from __future__ import annotations

import argparse
import logging
import os
import re

from .config import command_line_config

__all__ = ["PLAIN_TEXT_LOGS", "PlainTextLogs", "redirect_evaluation_output"]


class PlainTextLogs(logging.Filter):
    """Drop ANSI colour codes from the records of a logger: Detectron2's ``default_setup`` colours
    the config it logs (pygments), and log.txt held the escape codes."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b[" in record.msg:
            record.msg = self._ANSI.sub("", record.msg)
        return True


PLAIN_TEXT_LOGS = PlainTextLogs()


def redirect_evaluation_output(args: argparse.Namespace) -> str:
    """Point ``--eval-only`` (config.yaml, log.txt, inference/) at a new folder
    ``OUTPUT_DIR/eval/<weights or export name>`` (``-2``, ``-3``, ... when it exists), so that an
    evaluation never overwrites or appends to what the training run (or an earlier evaluation)
    wrote in OUTPUT_DIR: appends ``OUTPUT_DIR <folder>`` to ``args.opts`` and keeps the training
    run's folder in ``args.training_output_dir`` (where ``--resume`` finds last_checkpoint).
    Called once before the processes start, so that all ranks agree. Returns the folder."""
    cfg = command_line_config(args)
    if getattr(args, "onnx", None):
        name = "onnx_" + os.path.basename(os.path.normpath(args.onnx))
    elif cfg.MODEL.WEIGHTS:
        name = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS))[0]
    else:
        name = "last_checkpoint" if getattr(args, "resume", False) else "no_weights"
    base = os.path.join(cfg.OUTPUT_DIR, "eval", name)
    folder, n = base, 1
    while os.path.exists(folder):
        n += 1
        folder = f"{base}-{n}"
    args.training_output_dir = cfg.OUTPUT_DIR
    args.opts = list(args.opts or []) + ["OUTPUT_DIR", folder]
    return folder
