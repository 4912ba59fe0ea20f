"""COCO-style evaluation that works with or without Detectron2's C++ extension."""
from __future__ import annotations

import functools
import logging
import os
from typing import Optional

from detectron2.config import CfgNode
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from .open_vocabulary import build_open_vocabulary_evaluator

__all__ = ["build_coco_evaluator", "fast_coco_eval_available"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def fast_coco_eval_available() -> bool:
    """Whether Detectron2 was built with its C++ ``COCOeval_opt``. The PyPI route (scripts/install_detectron2.py)
    builds Detectron2 without ``_C``; asking COCOEvaluator for the fast path there fails at the
    end of inference, after all the work is done."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalAccumulate")


def build_coco_evaluator(cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """Box AP (and mask AP when MODEL.MASK_ON) for a dataset with COCO-style annotations; for the
    open-vocabulary and LVIS datasets, their evaluators (:mod:`.open_vocabulary`).

    Predictions are written to ``<output_folder>/coco_instances_results.json`` (default
    ``OUTPUT_DIR/inference/<dataset_name>``); COCOEvaluator also logs the per-category AP table.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    use_fast_impl = fast_coco_eval_available()
    if not use_fast_impl:
        logger.info("Detectron2's C++ COCOeval_opt is unavailable: using pycocotools' COCOeval")
    # OV-COCO (AP50 on novel / base / all) and LVIS (APr, APc, APf) datasets, by their evaluator_type.
    special = build_open_vocabulary_evaluator(dataset_name, tasks, output_folder, cfg.TEST.DETECTIONS_PER_IMAGE, use_fast_impl)
    if special is not None:
        return special
    return COCOEvaluator(
        dataset_name,
        tasks=tasks,
        distributed=True,
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        use_fast_impl=use_fast_impl,
    )
