"""Evaluators of the DenseCLIP project."""
from .coco import build_coco_evaluator, fast_coco_eval_available
from .open_vocabulary import CompatibleLVISEvaluator, OpenVocabularyCOCOEvaluator, evaluation_model, split_ap50

__all__ = [
    "CompatibleLVISEvaluator",
    "OpenVocabularyCOCOEvaluator",
    "build_coco_evaluator",
    "evaluation_model",
    "fast_coco_eval_available",
    "split_ap50",
]
