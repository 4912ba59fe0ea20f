"""Paired rounds: DenseCLIP and its CLIP baseline resident together and timed in alternation, one
time ratio per round (the time targets are checked on these)."""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch

from .components import model_num_classes
from .configs import load_config
from .inputs import make_inputs, synthetic_images
from .phases import TrainStep
from .timing import autocast_context, summarize, summarize_ratios, synchronize
from .workload import build_benchmark_model, calibration_size


def time_alternating(subject: Callable[[], Any], reference: Callable[[], Any], warmup: int, repeats: int,
                     device: str) -> Dict[str, Any]:
    """Time two workloads in alternating rounds (subject first in even rounds, reference first in
    odd ones); each round gives one subject / reference ratio. A change of the machine's speed
    between rounds (other tenants, clocks) scales both sides of a round alike, so the ratios are
    far steadier than those of phases timed minutes apart."""
    fns = (subject, reference)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: Tuple[List[float], List[float]] = ([], [])
    for r in range(repeats):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            synchronize(device)
            start = time.perf_counter()
            fns[i]()
            synchronize(device)
            times[i].append(time.perf_counter() - start)
    return {
        "ratio": summarize_ratios([a / b for a, b in zip(*times)]),
        "subject": summarize(times[0]),
        "reference": summarize(times[1]),
    }


def paired_ratios(subject_path: Path, reference_path: Path, args, sizes: List[Tuple[int, int]]) -> Dict[str, Any]:
    """DenseCLIP / CLIP-baseline time ratios with both models resident, from alternating rounds of
    batch-1 inference and of training iterations, per size (``--paired-repeats`` rounds each)."""
    from detectron2.utils.events import EventStorage

    autocast = autocast_context(args)
    repeats = args.paired_repeats or args.repeats
    cfgs = [load_config(p, args.device, args.opts, args.keep_score_thresh) for p in (subject_path, reference_path)]
    models = [build_benchmark_model(cfg, args, calibration_size(args, sizes))[0] for cfg in cfgs]
    out: Dict[str, Any] = {}
    try:
        for size in sizes:
            entry: Dict[str, Any] = {}
            out[f"{size[0]}x{size[1]}"] = entry
            if not args.skip_inference:
                single = make_inputs(synthetic_images(1, size, args.seed), args.device)
                for m in models:
                    m.eval()
                with torch.no_grad(), autocast():
                    a, b = (lambda m=m: m(single) for m in models)
                    entry["inference"] = time_alternating(a, b, args.warmup, repeats, args.device)
            if not args.skip_train:
                steps = [TrainStep(m, size, model_num_classes(m, cfg), args, autocast) for m, cfg in zip(models, cfgs)]
                try:
                    with EventStorage(0):
                        entry["train"] = time_alternating(steps[0], steps[1], args.warmup, repeats, args.device)
                finally:
                    for step in steps:
                        step.close()
            gc.collect()
    finally:
        del models
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return out

