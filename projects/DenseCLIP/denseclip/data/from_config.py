"""The datasets a config asks for, registered by one explicit call (train_net.py, demo.py, tests),
as Detectron2's projects register theirs: config building itself registers nothing."""
from __future__ import annotations

import logging
from typing import List, Sequence

from detectron2.config import CfgNode

from .register import register_datasets_from_spec
from .synthetic_registration import register_synthetic_from_config

logger = logging.getLogger(__name__)


def register_datasets_from_config(cfg: CfgNode, dataset_specs: Sequence[str] = ()) -> List[str]:
    """Register the datasets of ``dataset_specs`` (``--dataset NAME=JSON:IMAGE_ROOT``, or
    ``NAME=sem_seg:IMAGE_DIR:LABEL_DIR:CLASSES_TXT`` for images and label PNGs) and of
    DATASETS.REGISTER, and the generated synthetic datasets where DATASETS.SYNTHETIC places them.
    The specs are recorded in DATASETS.REGISTER (``cfg`` must be unfrozen when there are new ones),
    so that a run's dumped config.yaml registers them again. Returns the registered names."""
    specs = list(dict.fromkeys(list(dataset_specs) + list(cfg.DATASETS.REGISTER)))
    names = register_datasets_from_spec(specs) if specs else []
    if specs != list(cfg.DATASETS.REGISTER):
        cfg.DATASETS.REGISTER = specs
    return names + register_synthetic_from_config(cfg)
