"""Evaluation of open-vocabulary datasets (denseclip.data.open_vocabulary): the model sees every name
of the evaluation set (the generalized setting), the metrics are split into novel and base classes.

- OV-COCO: :class:`OpenVocabularyCOCOEvaluator`, Detectron2's COCOEvaluator plus box (and mask) AP50
  over the novel, the base and all classes (``AP50_novel``, ``AP50_base``, ``AP50_all``), the
  numbers OVR-CNN, ViLD, RegionCLIP and Detic report, from COCOeval's per-category precision.
- OV-LVIS: Detectron2's LVISEvaluator (APr = novel, APc, APf, AP; boxes and masks).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, LVISEvaluator

logger = logging.getLogger(__name__)

__all__ = ["CompatibleLVISEvaluator", "OpenVocabularyCOCOEvaluator", "evaluation_model", "split_ap50"]


def split_ap50(precision: np.ndarray, class_names: Sequence[str], novel: Sequence[str]) -> Dict[str, float]:
    """AP50 (in %) averaged over the novel, the base (every other) and all classes, from COCOeval's
    ``eval["precision"]`` (IoU x recall x class x area x max detections): IoU 0.5, all areas, the
    largest number of detections. Classes without ground truth (precision -1) are left out; a group
    without any class with ground truth is NaN."""
    per_class = []
    for k in range(len(class_names)):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class.append(float(np.mean(p)) * 100 if p.size else math.nan)
    novel_set = set(novel)
    groups = {
        "AP50_novel": [ap for ap, n in zip(per_class, class_names) if n in novel_set],
        "AP50_base": [ap for ap, n in zip(per_class, class_names) if n not in novel_set],
        "AP50_all": per_class,
    }
    out = {}
    for key, values in groups.items():
        valid = [v for v in values if not math.isnan(v)]
        out[key] = float(np.mean(valid)) if valid else math.nan
    return out


class OpenVocabularyCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator whose box (and mask) results also hold AP50 over the dataset's ``novel_classes``,
    its other (base) classes and all of them."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None or not class_names:  # no predictions: NaN, as COCOEvaluator's own metrics
            results.update({key: math.nan for key in ("AP50_novel", "AP50_base", "AP50_all")})
            return results
        novel = self._metadata.get("novel_classes", [])
        split = split_ap50(coco_eval.eval["precision"], class_names, novel)
        self._logger.info(
            "%s AP50 (generalized, %d names): novel %.2f | base %.2f | all %.2f", iou_type, len(class_names),
            split["AP50_novel"], split["AP50_base"], split["AP50_all"],
        )
        results.update(split)
        return results


@contextlib.contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """lvis 0.5.3 (the last release) calls ``np.float``, which NumPy 1.24 removed; it was the builtin
    ``float``. Supplied only while LVIS evaluation runs, and only where NumPy lacks it."""
    missing = "float" not in np.__dict__
    if missing:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if missing:
            del np.float  # type: ignore[attr-defined]


class CompatibleLVISEvaluator(LVISEvaluator):
    """Detectron2's LVISEvaluator (box and mask AP, APr, APc, APf) with the pinned lvis package
    working under NumPy 2 (:func:`_numpy_float_alias`)."""

    def evaluate(self):
        with _numpy_float_alias():
            return super().evaluate()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def evaluation_model(model: torch.nn.Module, dataset_name: str) -> torch.nn.Module:
    """The model to evaluate ``dataset_name`` with: ``model`` itself, or, for an open-vocabulary
    evaluation set whose names differ from the model's, a copy of it with the dataset's vocabulary
    (the generalized setting: every base and novel name at once). A copy, so that the trained model,
    its parameters and the optimizer's references to them stay untouched during training."""
    if not MetadataCatalog.get(dataset_name).get("novel_classes", None):
        return model
    names: List[str] = list(MetadataCatalog.get(dataset_name).thing_classes)
    inner = _unwrap(model)
    if list(getattr(inner, "class_names", [])) == names:
        return model
    if not getattr(inner, "language_guided", False):
        raise ValueError(
            f"'{dataset_name}' is an open-vocabulary evaluation set ({len(names)} names, novel ones included): it needs a "
            "model with the language-guided heads (MODEL.DENSECLIP.HEAD 'language', *_denseclip_language_* configs)"
        )
    evaluated = copy.deepcopy(inner)
    evaluated.set_vocabulary(names)
    logger.info("Evaluating '%s' with its %d names (%d novel)", dataset_name, len(names),
                len(MetadataCatalog.get(dataset_name).novel_classes))
    return evaluated


def build_open_vocabulary_evaluator(dataset_name: str, tasks: Sequence[str], output_folder: str,
                                    max_dets_per_image: int, use_fast_impl: bool) -> Optional[object]:
    """The evaluator of an open-vocabulary or LVIS dataset (by its metadata's ``evaluator_type``), else None."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco_open_vocabulary":
        return OpenVocabularyCOCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
                                           max_dets_per_image=max_dets_per_image, use_fast_impl=use_fast_impl)
    if evaluator_type == "lvis":
        return CompatibleLVISEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
                                       max_dets_per_image=max_dets_per_image)
    return None
