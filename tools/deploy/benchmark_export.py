#!/usr/bin/env python
"""ONNX Runtime vs PyTorch eager inference of the paper models, side by side in one run, on the
same CPU threads, plus file sizes (docs/BENCHMARKS.md, "Deployment").

    python tools/deploy/benchmark_export.py --threads 2 --iters 5
    python tools/deploy/benchmark_export.py --models retinanet --iters 10 --output export_bench.json

Each model is built from its paper config with random weights (no checkpoint is downloaded; the
network's cost does not depend on the weights; score thresholds are 0 so that the post-processing
handles 100 detections), exported to ONNX, and both run on the same random image through the same
pre- and post-processing (``denseclip.deploy.ExportedModel`` vs the PyTorch model). Timings
alternate eager / ONNX Runtime per iteration (paired, so that load changes on a shared machine hit
both alike); medians are reported with the ratio ORT / eager.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "projects" / "DenseCLIP"))

REPO_ROOT = Path(__file__).resolve().parents[2]
# name -> (config, image height, width)
MODELS = {
    "retinanet": ("configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml", 800, 1333),
    "mask_rcnn": ("configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", 800, 1333),
    "semantic_fpn": ("configs/ADE20K/semantic_fpn_denseclip_R50_512x512_80k.yaml", 512, 512),
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads (default: torch's)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per runtime (after one warm-up)")
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON")
    return parser


def folder_size(folder: str, names) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def benchmark(name: str, iters: int, threads: int) -> dict:
    import torch
    from detectron2.modeling import build_model

    from denseclip.deploy import ExportedModel, export_model
    from denseclip.engine import build_config

    config, height, width = MODELS[name]
    # Score thresholds 0: random heads would otherwise keep an arbitrary number of detections; with
    # 0 both runtimes post-process TEST.DETECTIONS_PER_IMAGE (100) detections (and masks), as a
    # trained model on a busy photo (docs/BENCHMARKS.md, "Keeping the workload realistic").
    opts = ["MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "TEST.SEM_SEG.MODE", "whole",
            "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    cfg = build_config(str(REPO_ROOT / config), opts)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(0)).float()
    inputs = [{"image": image, "height": height, "width": width}]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        manifest = export_model(model, cfg, folder, "onnx")
        export_s = time.perf_counter() - start
        onnx_bytes = folder_size(folder, [g["file"] for g in manifest["graphs"].values()])
        torch.save(model.state_dict(), os.path.join(folder, "model.pth"))
        pth_bytes = os.path.getsize(os.path.join(folder, "model.pth"))
        runner = ExportedModel(folder, num_threads=threads)
        times = {"eager": [], "onnxruntime": []}
        with torch.no_grad():
            for it in range(iters + 1):  # iteration 0 warms up both
                for key, run in (("eager", model), ("onnxruntime", runner)):
                    start = time.perf_counter()
                    run(inputs)
                    if it:
                        times[key].append(time.perf_counter() - start)
    eager, ort = statistics.median(times["eager"]), statistics.median(times["onnxruntime"])
    return {
        "model": name, "config": config, "input": f"{width}x{height}", "threads": threads, "iters": iters,
        "eager_s": eager, "onnxruntime_s": ort, "ratio": ort / eager, "export_s": export_s,
        "onnx_mb": onnx_bytes / 2**20, "pytorch_state_dict_mb": pth_bytes / 2**20,
        "graphs": {k: g["file"] for k, g in manifest["graphs"].items()},
    }


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results = []
    print(f"{'model':<14}{'input':>10}{'eager s':>10}{'ORT s':>10}{'ORT/eager':>11}{'ONNX MB':>10}{'.pth MB':>10}{'export s':>10}")
    for name in args.models:
        r = benchmark(name, args.iters, threads)
        results.append(r)
        print(f"{r['model']:<14}{r['input']:>10}{r['eager_s']:>10.3f}{r['onnxruntime_s']:>10.3f}{r['ratio']:>11.2f}"
              f"{r['onnx_mb']:>10.1f}{r['pytorch_state_dict_mb']:>10.1f}{r['export_s']:>10.0f}", flush=True)
    print(f"threads: {threads} (torch and ONNX Runtime), median of {args.iters} paired iterations; random weights")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
