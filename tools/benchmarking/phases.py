"""One config measured: FLOPs, parameters, training iterations, inference latency and throughput
(with memory and text-encoder calls), profile, per-component breakdown and utilisation."""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .breakdown import breakdown_inference
from .components import count_parameters, count_text_encoder_calls, is_semantic_segmentor, model_num_classes
from .configs import PAPER, describe_config, load_config
from .flops import count_flops
from .inputs import make_inputs, synthetic_images, synthetic_sem_seg, synthetic_targets
from .machine import utilization
from .memory import measure_memory
from .profiling import profile_inference
from .timing import amp_dtype, autocast_context, time_phase
from .workload import build_benchmark_model, calibration_size, probe_workload

logger = logging.getLogger("benchmark")


def benchmark_config(path: Path, args, sizes: List[Tuple[int, int]], peak: Optional[float] = None) -> Dict[str, Any]:
    """Everything measured for one config; ``peak`` (TFLOP/s) adds utilisation figures."""
    device = args.device
    cfg = load_config(path, device, args.opts, args.keep_score_thresh)
    desc = describe_config(cfg)
    name = path.stem
    result: Dict[str, Any] = {"name": name, "config": str(path), **desc, "errors": {}}
    paper = PAPER.get((desc["detector"], desc["encoder"], desc["variant"]))
    result["paper"] = paper

    model, result["frozen_bn_calibrated"] = build_benchmark_model(cfg, args, calibration_size(args, sizes))
    result["params"] = count_parameters(model)
    result["is_denseclip"] = desc["variant"] == "denseclip"
    num_classes = model_num_classes(model, cfg)
    result["num_classes"] = num_classes
    autocast = autocast_context(args)
    result["amp_dtype"] = str(amp_dtype(args)).replace("torch.", "") if args.amp else None

    # ---------------------------------------------------------------- FLOPs
    if not args.skip_flops:
        logger.info("[%s] counting FLOPs at %dx%d", name, *args.flops_size)
        try:
            images = synthetic_images(1, args.flops_size, args.seed)
            start = time.perf_counter()
            flops_inputs = make_inputs(images, device)
            result["flops"] = count_flops(model, flops_inputs)
            result["flops"]["workload"] = probe_workload(model, flops_inputs)
            result["flops"]["size"] = f"{args.flops_size[0]}x{args.flops_size[1]}"
            result["flops"]["count_seconds"] = time.perf_counter() - start
        except Exception as e:  # keep benchmarking the other phases / configs
            logger.exception("[%s] FLOP count failed", name)
            result["errors"]["flops"] = repr(e)
        gc.collect()

    # ---------------------------------------------------------------- timed phases, per size
    result["sizes"] = {}
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        entry: Dict[str, Any] = {}
        result["sizes"][key] = entry
        if not args.skip_train:
            logger.info("[%s] training iterations at %s, batch %d", name, key, args.batch_train)
            try:
                entry["train"] = time_training(model, size, num_classes, args, autocast)
            except Exception as e:
                logger.exception("[%s] training benchmark failed", name)
                result["errors"][f"train@{key}"] = repr(e)
            gc.collect()
        if not args.skip_inference:
            logger.info("[%s] inference at %s", name, key)
            try:
                entry.update(time_inference(model, size, args, autocast))
            except Exception as e:
                logger.exception("[%s] inference benchmark failed", name)
                result["errors"][f"inference@{key}"] = repr(e)
            if args.profile:
                try:
                    images = synthetic_images(1, size, args.seed)
                    entry["profile"] = profile_inference(model, make_inputs(images, device), args.repeats, device, autocast)
                except Exception as e:
                    logger.exception("[%s] profile failed", name)
                    result["errors"][f"profile@{key}"] = repr(e)
            if not args.skip_breakdown:
                try:
                    images = synthetic_images(1, size, args.seed)
                    entry["breakdown"] = breakdown_inference(model, make_inputs(images, device), args.warmup,
                                                             args.repeats, device, autocast)
                except Exception as e:
                    logger.exception("[%s] breakdown failed", name)
                    result["errors"][f"breakdown@{key}"] = repr(e)
            gc.collect()
        if peak is not None and not args.skip_flops:
            try:
                gmacs = ((result.get("flops") or {}).get("gflops") if tuple(size) == tuple(args.flops_size)
                         else count_flops(model, make_inputs(synthetic_images(1, size, args.seed), device))["gflops"])
                entry["utilization"] = utilization(entry, gmacs, peak)
            except Exception as e:
                logger.exception("[%s] utilisation failed", name)
                result["errors"][f"utilization@{key}"] = repr(e)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


class TrainStep:
    """One training iteration of ``model`` on a fixed synthetic batch: forward, backward and an
    AdamW step over the trainable parameters (with a GradScaler for fp16 AMP on CUDA).
    Call inside a Detectron2 ``EventStorage``; ``close()`` frees the optimizer state."""

    optimizer_description = "torch.optim.AdamW over the trainable parameters (no gradient clipping)"

    def __init__(self, model: torch.nn.Module, size: Tuple[int, int], num_classes: int, args, autocast: Callable):
        self.model = model
        self.autocast = autocast
        images = synthetic_images(args.batch_train, size, args.seed)
        make_targets = synthetic_sem_seg if is_semantic_segmentor(model) else synthetic_targets
        targets = make_targets(args.batch_train, size, num_classes, args.seed)
        self.batch = make_inputs(images, args.device, targets)
        params = [p for p in model.parameters() if p.requires_grad]
        # Small lr: many steps on the same random batch must stay finite (the time does not depend on it).
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4)
        use_scaler = args.amp and args.device == "cuda" and amp_dtype(args) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.last_losses: Dict[str, float] = {}
        model.train()

    def __call__(self) -> None:
        with self.autocast():
            losses = self.model(self.batch)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer = None
        self.model.eval()


def time_training(model, size, num_classes, args, autocast) -> Dict[str, Any]:
    from detectron2.utils.events import EventStorage

    step = TrainStep(model, size, num_classes, args, autocast)
    try:
        with EventStorage(0), measure_memory(args.device) as mem:
            timing = time_phase(step, args.warmup, args.repeats, args.device)
    finally:
        step.close()
    timing["batch"] = args.batch_train
    timing["images_per_s"] = args.batch_train * 1000.0 / timing["median_ms"]
    timing["memory"] = mem
    timing["optimizer"] = TrainStep.optimizer_description
    timing["last_losses"] = step.last_losses
    return timing


def time_inference(model, size, args, autocast) -> Dict[str, Any]:
    """The workload of one inference, then batch-1 latency and throughput; the text-encoder calls of
    each: the first inference after the training phase computes the text embeddings (1 call), the
    warm-up and timed repetitions must find them cached (0 calls)."""
    device = args.device
    model.eval()
    out: Dict[str, Any] = {}
    single = make_inputs(synthetic_images(1, size, args.seed), device)
    many = make_inputs(synthetic_images(args.batch_throughput, size, args.seed), device)
    calls: Dict[str, int] = {}

    with count_text_encoder_calls(model) as counter:
        def snapshot(key: str) -> Callable[[], None]:
            def take():
                if counter is not None:
                    calls[key] = counter["calls"]
                    counter["calls"] = 0
            return take

        out["workload"] = probe_workload(model, single)
        snapshot("first")()
        with torch.no_grad(), autocast():
            out.update(_time_latency_and_throughput(model, single, many, args, snapshot))
    if calls:
        calls["warmup"] = calls["latency_warmup"] + calls["throughput_warmup"]
        calls["timed"] = calls["latency_timed"] + calls["throughput_timed"]
    out["text_encoder_calls"] = calls if calls else None
    out["text_encoder_calls_timed"] = calls.get("timed") if calls else None
    return out


def _time_latency_and_throughput(model, single, many, args, snapshot: Callable[[str], Callable[[], None]]) -> Dict[str, Any]:
    """Batch-1 latency on ``single`` and throughput on ``many``; ``snapshot(key)`` records the
    text-encoder calls so far under ``key``."""
    device = args.device
    out: Dict[str, Any] = {}
    with measure_memory(device) as mem:
        latency = time_phase(lambda: model(single), args.warmup, args.repeats, device, snapshot("latency_warmup"))
    snapshot("latency_timed")()
    latency["batch"] = 1
    latency["memory"] = mem
    out["inference"] = latency

    with measure_memory(device) as mem:
        tput = time_phase(lambda: model(many), args.warmup, args.repeats, device, snapshot("throughput_warmup"))
    snapshot("throughput_timed")()
    tput["batch"] = args.batch_throughput
    tput["images_per_s"] = args.batch_throughput * 1000.0 / tput["median_ms"]
    # Spread of the throughput: from the quartiles and the slowest / fastest repetitions.
    tput["images_per_s_q1"] = args.batch_throughput * 1000.0 / tput["q3_ms"]
    tput["images_per_s_q3"] = args.batch_throughput * 1000.0 / tput["q1_ms"]
    tput["images_per_s_min"] = args.batch_throughput * 1000.0 / tput["max_ms"]
    tput["images_per_s_max"] = args.batch_throughput * 1000.0 / tput["min_ms"]
    tput["memory"] = mem
    out["throughput"] = tput
    return out

