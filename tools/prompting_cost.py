#!/usr/bin/env python
"""What each MODEL.DENSECLIP.PROMPTING variant costs per iteration (docs/BENCHMARKS.md, "Prompting
ablation"): time and peak memory of the text side (prompt encoder, context decoder, score maps)
for K classes and B images, and optionally paired time ratios of whole models (pre / post, none / post).

The variants differ only in their text side; everything else in a model is the same. So the grid
times the paper-sized text side alone (the CLIP RN50 text tower, D = 1024, the config's decoder) on
random image embeddings of the config's input size: a training iteration (forward, a loss on the
text and score maps, backward, AdamW step over the trainable parameters) and an inference forward
(post and none then read the cached text embeddings, pre runs the text tower per image).

    python tools/prompting_cost.py --device cpu --threads 2 --output-json prompting_cost.json
    python tools/prompting_cost.py --paired-size 640x384 --paired-repeats 3   # + whole-model ratios
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS), str(TOOLS.parent / "projects" / "DenseCLIP")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarking.cli import build_parser as benchmark_parser  # noqa: E402
from benchmarking.cli import parse_size  # noqa: E402
from benchmarking.components import count_parameters  # noqa: E402
from benchmarking.configs import PAPER_FLOPS_SIZE, SEGMENTATION_FLOPS_SIZE, load_config  # noqa: E402
from benchmarking.flops import _import_flop_count_analysis, flop_analysis  # noqa: E402
from benchmarking.memory import measure_memory  # noqa: E402
from benchmarking.paired import paired_ratios  # noqa: E402
from benchmarking.timing import autocast_context, time_phase  # noqa: E402
from denseclip.backbone import CLIP_DENSE, CLIP_GLOBAL  # noqa: E402
from denseclip.modeling.composition import build_text_side  # noqa: E402
from denseclip.modeling.encoders import build_denseclip_encoders  # noqa: E402
from denseclip.modeling.vocabulary import vocabulary_from_config  # noqa: E402

REPO = TOOLS.parent
# (task, config of the post variant, K, input size the dense embeddings come from)
WORKLOADS = [
    ("ADE20K Semantic FPN", "configs/ADE20K/semantic_fpn_denseclip_R50_512x512_80k.yaml", 150, (512, 512)),
    ("COCO RetinaNet", "configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml", 80, (1333, 800)),
]
# Parameters and FLOPs: also Mask R-CNN (its text side is RetinaNet's); FLOPs at the paper's sizes.
COST_WORKLOADS = [
    ("ADE20K Semantic FPN", WORKLOADS[0][1], 150, SEGMENTATION_FLOPS_SIZE),
    ("COCO RetinaNet", WORKLOADS[1][1], 80, PAPER_FLOPS_SIZE),
    ("COCO Mask R-CNN", "configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", 80, PAPER_FLOPS_SIZE),
]
MODES = ("post", "pre", "none")


def variant_path(post_config: str, mode: str) -> Path:
    return REPO / (post_config if mode == "post" else post_config.replace(".yaml", f"_prompting-{mode}.yaml"))


def build_paper_text_side(cfg, num_classes: int, device: str) -> torch.nn.Module:
    """The config's text side (random CLIP weights) for its dataset's class names (ADE20K's 150,
    COCO's 80: the real prompt lengths)."""
    kind = "stuff" if cfg.MODEL.META_ARCHITECTURE.endswith("SemanticSegmentor") else "thing"
    names = vocabulary_from_config(cfg, kind)
    if len(names) != num_classes:
        raise ValueError(f"{cfg.DATASETS.TRAIN[0]} has {len(names)} {kind} classes, expected {num_classes}")
    backbone, clip_model = build_denseclip_encoders(cfg)
    return build_text_side(cfg, clip_model, backbone.embed_dim, names).to(device)


class _TextSideOnImage(torch.nn.Module):
    """The text side as fvcore traces it: (global, dense) embeddings -> (text, score maps)."""

    def __init__(self, side: torch.nn.Module):
        super().__init__()
        self.side = side

    def forward(self, global_embed: torch.Tensor, dense: torch.Tensor):
        return tuple(self.side({CLIP_GLOBAL: global_embed, CLIP_DENSE: dense}))


def _module_gflops(by_module: Dict[str, int], path: str) -> float:
    # Detectron2's FlopCountAnalysis traces the module under a TracingAdapter named "model".
    return by_module.get(path, by_module.get("model." + path, 0)) / 1e9


def variant_cost(cfg, num_classes: int, flops_size) -> Dict[str, Any]:
    """Parameters of the whole model (tools/benchmark.py's counts) and fvcore GFLOPs of its text side
    at inference, batch 1, for an image of ``flops_size``: with the vocabulary's text cached (post,
    none: the text tower is not run, as the paper's counts exclude it) or per image (pre: the text
    tower runs on the K prompts and is counted, separately too)."""
    from denseclip.modeling import build_denseclip_model

    model = build_denseclip_model(cfg).eval()
    params = count_parameters(model)
    side = model.text_side
    dense = torch.randn(1, side.text_embeddings_cache.shape[1], flops_size[1] // 32, flops_size[0] // 32)
    inputs = (torch.randn(1, dense.shape[1]), dense)
    with torch.no_grad():
        wrapper = _TextSideOnImage(side).eval()
        wrapper(*inputs)  # fills the text cache of post / none
        analysis = flop_analysis(_import_flop_count_analysis(), wrapper, inputs)
        by_module = analysis.by_module()
        total = analysis.total()
    assert len(side.vocabulary) == num_classes
    return {
        "params_m": params["total"] / 1e6,
        "params_without_frozen_text_m": params["excluding_frozen_text_encoder"] / 1e6,
        "trainable_m": params["trainable"] / 1e6,
        "text_side_gflops": total / 1e9,
        "text_tower_gflops": _module_gflops(by_module, "side.prompt_encoder"),
        "context_decoder_gflops": _module_gflops(by_module, "side.context_decoder"),
        "flops_size": list(flops_size),
    }


def text_side_iteration(side: torch.nn.Module, batch: int, size, args) -> Dict[str, Any]:
    """Time and peak memory of the text side's training iteration and inference forward."""
    stride = 32
    dense = torch.randn(batch, side.text_embeddings_cache.shape[1], size[1] // stride, size[0] // stride, device=args.device)
    features = {CLIP_DENSE: dense, CLIP_GLOBAL: torch.randn(batch, dense.shape[1], device=args.device)}
    params = [p for p in side.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    autocast = autocast_context(args)

    saved: Dict[int, int] = {}

    def count_saved(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def train_step():
        side.train()
        saved.clear()
        with autocast(), torch.autograd.graph.saved_tensors_hooks(count_saved, lambda t: t):
            text, score_map = side(features)
            loss = score_map.float().square().mean() + text.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer():
        side.eval()
        with torch.no_grad(), autocast():
            side(features)

    out: Dict[str, Any] = {"trainable_params": sum(p.numel() for p in params)}
    # Inference after at least one untimed call: post and none encode the vocabulary there (the
    # training steps dropped the cache), as a deployed model does once.
    for name, fn, warmup in (("train", train_step, args.warmup), ("inference", infer, max(1, args.warmup))):
        with measure_memory(args.device) as memory:
            timing = time_phase(fn, warmup, args.repeats, args.device)
        out[name] = {"median_ms": timing["median_ms"], "iqr_ms": timing["iqr_ms"], "times_ms": timing["times_ms"]}
        if args.device == "cuda":
            out[name]["peak_delta_mb"] = memory["peak_delta_mb"]
    # The activations a training iteration keeps for its backward (storages saved by autograd): what
    # grows with B x K; the CPU's peak RSS of one process running several rows does not show it.
    out["train"]["saved_for_backward_mb"] = sum(saved.values()) / 2**20
    return out


def main() -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="autocast (CUDA; as tools/benchmark.py --amp)")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--paired-size", type=parse_size, default=None, metavar="WxH",
                   help="also time whole models (pre / post, none / post) in alternating rounds at this size")
    p.add_argument("--paired-repeats", type=int, default=3)
    p.add_argument("--paired-tasks", nargs="+", default=None, metavar="TASK",
                   help="paired rounds for these tasks only (words of their names, e.g. ADE20K RetinaNet 'Mask R-CNN')")
    p.add_argument("--skip-cost", action="store_true", help="skip parameters and FLOPs")
    p.add_argument("--skip-timing", action="store_true", help="skip the text side's time and memory grid")
    p.add_argument("--output-json", default="prompting_cost.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # tools/benchmark.py's settings for what this script leaves at their defaults (AMP dtype, seed...).
    bench_args = benchmark_parser().parse_args(["--device", args.device, "--warmup", str(args.warmup),
                                                "--repeats", str(args.repeats), *(["--amp"] if args.amp else [])])
    args.amp_dtype = bench_args.amp_dtype
    results: Dict[str, Any] = {"device": args.device, "amp": args.amp, "threads": torch.get_num_threads(),
                               "cost": [], "text_side": []}
    for task, config, num_classes, size in ([] if args.skip_cost else COST_WORKLOADS):
        for mode in MODES:
            torch.manual_seed(0)
            cfg = load_config(variant_path(config, mode), "cpu", [], False)
            row = {"task": task, "mode": mode, "K": num_classes, **variant_cost(cfg, num_classes, size)}
            results["cost"].append(row)
            print(json.dumps(row), flush=True)
    for task, config, num_classes, size in ([] if args.skip_timing else WORKLOADS):
        for mode in MODES:
            cfg = load_config(variant_path(config, mode), args.device, [], False)
            torch.manual_seed(0)
            side = build_paper_text_side(cfg, num_classes, args.device)
            for batch in args.batches:
                row = {"task": task, "mode": mode, "K": num_classes, "B": batch, "size": list(size),
                       **text_side_iteration(side, batch, size, args)}
                results["text_side"].append(row)
                print(json.dumps(row), flush=True)
    if args.paired_size is not None:
        bench_args.paired_repeats = args.paired_repeats
        results["paired"] = paired_pairs(bench_args, args.paired_size, args.paired_tasks)
    Path(args.output_json).write_text(json.dumps(results, indent=1))
    return results


def paired_pairs(bench_args, size, tasks: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Whole-model time ratios, pre / post and none / post, in alternating rounds (tools/benchmark.py's
    paired rounds: batch-1 inference and training iterations), for every ablation config's task, or
    those whose name contains one of ``tasks``."""
    out = []
    for task, config, _, _ in COST_WORKLOADS:
        if tasks and not any(t in task for t in tasks):
            continue
        for mode in ("pre", "none"):
            ratios = paired_ratios(variant_path(config, mode), variant_path(config, "post"), bench_args, [size])
            entry = {"task": task, "subject": mode, "reference": "post", "size": list(size),
                     **{phase: r["ratio"] for phase, r in ratios[f"{size[0]}x{size[1]}"].items()}}
            print(json.dumps(entry), flush=True)
            out.append(entry)
    return out


if __name__ == "__main__":
    main()
