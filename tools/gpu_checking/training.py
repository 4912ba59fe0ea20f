"""Training runs of the GPU check: the data, one config trained with AMP for a few iterations, its
evaluation under autocast (with the text-encoder calls counted) and the demo."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from benchmarking.components import count_text_encoder_calls
from benchmarking.configs import resolve_config_path

from . import TrainRun

logger = logging.getLogger("gpu_check")

# The scaled-down model of the dry run (--tiny): RN-tiny CLIP towers and small heads.
TINY_MODEL_OPTS = [
    "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "TEST.DETECTIONS_PER_IMAGE", "8",
]


def prepare_data(args, out: Path) -> Dict[str, Any]:
    """tiny_coco (real COCO photos) when $DENSECLIP_TINY_COCO holds it and --data allows, else the
    generated synthetic-shapes set (small: its images are only read, never learned here)."""
    from denseclip.data import register_synthetic_dataset, register_tiny_coco

    root = os.environ.get("DENSECLIP_TINY_COCO", "")
    has_coco = bool(root) and (Path(root) / "annotations" / "instances_val2017.json").is_file()
    if args.data == "tiny_coco" and not has_coco:
        raise SystemExit(f"--data tiny_coco: no tiny_coco at DENSECLIP_TINY_COCO={root!r}")
    if args.data != "synthetic" and has_coco:
        train, test = register_tiny_coco(root)
        return {"name": "tiny_coco", "root": root, "train": train, "test": test}
    num_train, num_val = (4, 2) if args.tiny else (32, 16)
    root = str(out / "synthetic_shapes")
    train, test = register_synthetic_dataset(root, num_train, num_val)
    # The same parameters as config keys: every registration from the config (training, demo) is alike.
    opts = ["DATASETS.SYNTHETIC.ROOT", root, "DATASETS.SYNTHETIC.NUM_TRAIN", str(num_train),
            "DATASETS.SYNTHETIC.NUM_VAL", str(num_val)]
    return {"name": "synthetic_shapes", "root": root, "train": train, "test": test, "opts": opts}


def run_overrides(args, data: Dict[str, Any], precision: Optional[str], out: Path) -> List[str]:
    """KEY VALUE overrides of a training run (random weights: nothing is downloaded)."""
    size = ["128", "128"] if args.tiny else ["800", "1333"]
    opts = [
        "MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, "SEED", "0",
        "DATASETS.TRAIN", f"('{data['train']}',)", "DATASETS.TEST", f"('{data['test']}',)",
        "INPUT.MIN_SIZE_TRAIN", f"({size[0]},)", "INPUT.MAX_SIZE_TRAIN", size[1],
        "INPUT.MIN_SIZE_TEST", size[0], "INPUT.MAX_SIZE_TEST", size[1],
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(args.iterations),
        "SOLVER.WARMUP_ITERS", str(min(10, args.iterations)), "SOLVER.CHECKPOINT_PERIOD", "1000000",
        "SOLVER.LOG_PERIOD", "1", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out),
        "DATALOADER.NUM_WORKERS", "0" if args.tiny else "2",
        "SOLVER.AMP.ENABLED", str(precision is not None),
    ]
    if precision is not None:
        opts += ["SOLVER.AMP.PRECISION", precision]
    return opts + list(data.get("opts", [])) + (TINY_MODEL_OPTS if args.tiny else []) + list(args.opts)


def load_run_config(run: TrainRun, opts: Sequence[str]):
    from denseclip.data import register_datasets_from_config
    from denseclip.engine import build_config

    cfg = build_config(str(resolve_config_path(run.config)), list(run.opts) + list(opts))
    register_datasets_from_config(cfg)
    cfg.freeze()
    return cfg


def _loss_summary(storage) -> Dict[str, Any]:
    """First / last value of every loss over the iterations, and whether all were finite."""
    out = {}
    for name, history in storage.histories().items():
        if name.startswith("loss") or name == "total_loss":
            values = [v for v, _ in history.values()]
            out[name] = {"first": values[0], "last": values[-1], "finite": all(math.isfinite(v) for v in values)}
    return out


def autocast(device: str, precision: Optional[str]):
    if precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, precision))


def evaluate(cfg, model, device: str, precision: Optional[str]) -> Dict[str, Any]:
    """COCO evaluation of ``cfg.DATASETS.TEST`` under autocast; the text-encoder calls are counted
    per image: the first image fills the embedding cache, no later one may call the encoder."""
    from denseclip.engine import Trainer

    starts: List[int] = []
    with count_text_encoder_calls(model) as counter:
        hook = None
        if counter is not None:
            hook = model.register_forward_pre_hook(lambda _m, _i: starts.append(counter["calls"]))
        try:
            with autocast(device, precision):
                results = Trainer.test(cfg, model)
        finally:
            if hook is not None:
                hook.remove()
    if "bbox" not in results:  # several test sets: {dataset: {task: metrics}}; one: {task: metrics}
        results = next(iter(results.values()), {})
    metrics = {task: {k: v for k, v in r.items() if k in ("AP", "AP50", "AP75")} for task, r in results.items()}
    calls_after_first = (counter["calls"] - starts[1]) if counter is not None and len(starts) > 1 else None
    return {"dataset": cfg.DATASETS.TEST[0], "images": len(starts), "metrics": metrics,
            "text_encoder_calls": None if counter is None else counter["calls"],
            "text_encoder_calls_after_first_image": calls_after_first}


def run_demo(run: TrainRun, opts: List[str], weights: Path, images: List[str], out: Path, device: str) -> Dict[str, Any]:
    from denseclip.demo_cli import get_parser
    from denseclip.demo_cli import run_demo as demo

    argv = ["--config-file", str(resolve_config_path(run.config)), "--input", *images, "--output", str(out),
            "--confidence-threshold", "0.05", "--score-maps", "--max-score-maps", "2"]
    argv += (["--cpu"] if device == "cpu" else []) + ["--opts", *run.opts, *opts, "MODEL.WEIGHTS", str(weights)]
    summary = demo(get_parser().parse_args(argv))
    return {"images": summary.num_images, "written": len(summary.written), "failed": [list(f) for f in summary.failed],
            "output": str(out)}


def train_and_evaluate(run: TrainRun, precision: Optional[str], args, data: Dict[str, Any], out: Path,
                       demo: bool) -> Dict[str, Any]:
    """One config: train ``args.iterations`` iterations with AMP in ``precision``, evaluate, and
    (``demo``) run the demo with the trained weights. Exceptions are recorded, not raised."""
    from detectron2.data import DatasetCatalog

    from denseclip.engine import Trainer

    rec: Dict[str, Any] = {"run": run.name, "config": run.config, "run_opts": list(run.opts),
                           "precision": precision or "float32", "iterations": args.iterations, "output": str(out),
                           "errors": {}}
    opts = run_overrides(args, data, precision, out)
    cuda = args.device == "cuda"
    try:
        cfg = load_run_config(run, opts)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        rec["step_trainer"] = type(trainer._trainer).__name__
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
            rec["train_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rec["train_seconds"] = time.perf_counter() - start
        rec["losses"] = _loss_summary(trainer.storage)
    except Exception as e:  # a non-finite loss ends training with FloatingPointError
        logger.exception("[%s %s] training failed", run.name, rec["precision"])
        rec["errors"]["train"] = repr(e)
        return rec
    try:
        rec["evaluation"] = evaluate(cfg, trainer.model, args.device, precision)
    except Exception as e:
        logger.exception("[%s %s] evaluation failed", run.name, rec["precision"])
        rec["errors"]["evaluation"] = repr(e)
    if demo:
        try:
            images = [d["file_name"] for d in DatasetCatalog.get(data["test"])[:1 if args.tiny else 3]]
            rec["demo"] = run_demo(run, opts, out / "model_final.pth", images, out / "demo", args.device)
        except Exception as e:
            logger.exception("[%s] demo failed", run.name)
            rec["errors"]["demo"] = repr(e)
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return rec
