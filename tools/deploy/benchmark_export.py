#!/usr/bin/env python
"""ONNX Runtime vs PyTorch eager inference of the paper models, end to end from a photo's pixels to
the predictions at the photo's size, side by side in one run, on the same CPU threads, plus file
sizes (docs/BENCHMARKS.md, "Deployment").

    python tools/deploy/benchmark_export.py --threads 2 --iters 5
    python tools/deploy/benchmark_export.py --models retinanet --iters 10 --int8 --output export_bench.json

Each model is built from its paper config with random weights (no checkpoint is downloaded; the
network's cost does not depend on the weights; score thresholds are 0 so that the post-processing
handles 100 detections and masks) and exported to one ONNX graph (``--format onnx``). Eager is the
project's predictor (``DenseCLIPPredictor``: test-time resize, model, Detectron2 post-processing,
mask paste); ONNX Runtime is tools/deploy/onnx_infer.py's pipeline (Pillow resize, the graph,
NumPy box scaling and mask paste), both on the same random photo. The runtimes alternate within
every round (paired, so that load changes on a shared machine hit both alike), after one warm-up
round; medians are reported with the ratio ORT / eager. ``--int8`` adds ONNX Runtime's dynamic int8
quantization of the graph (``quantize_dynamic``: MatMul and Gemm weights) with its distance to the
float graph's predictions.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # onnx_infer

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
    parser.add_argument("--int8", action="store_true", help="also time ONNX Runtime's dynamic int8 quantization of the graph")
    parser.add_argument("--output", metavar="FILE", help="also write the results as JSON")
    return parser


def folder_size(folder: str, names) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def run_onnx(onnx_infer, export, photo_rgb):
    if export.segmentation:
        return {"sem_seg": onnx_infer.segment(export, photo_rgb)}
    return onnx_infer.detect(export, photo_rgb)


def distance(reference: dict, other: dict) -> dict:
    """How far ``other`` (ONNX Runtime predictions, NumPy) is from ``reference``: detection counts,
    the same classes (as multisets), the largest score difference (sorted scores) and the largest
    distance of a reference box to the nearest box of its class in ``other`` (random weights give
    tied scores, whose order is float noise); segmentation: the fraction of pixels with the same class."""
    import numpy as np

    if "sem_seg" in reference:
        return {"argmax_agreement": float((reference["sem_seg"].argmax(0) == other["sem_seg"].argmax(0)).mean())}
    counts = [int(len(reference["scores"])), int(len(other["scores"]))]
    if counts[0] != counts[1]:
        return {"detections": counts}
    box_diff = np.abs(reference["boxes"][:, None] - other["boxes"][None]).max(-1, initial=0)
    box_diff = np.where(reference["classes"][:, None] == other["classes"][None], box_diff, np.inf)
    return {
        "detections": counts,
        "same_classes": bool((np.sort(reference["classes"]) == np.sort(other["classes"])).all()),
        "max_score_diff": float(np.abs(np.sort(reference["scores"]) - np.sort(other["scores"])).max(initial=0)),
        "max_box_diff_nearest_same_class": float(box_diff.min(1, initial=np.inf).max(initial=0)) if counts[0] else 0.0,
    }


def benchmark(name: str, iters: int, threads: int, int8: bool) -> dict:
    import numpy as np
    import onnx_infer
    import torch

    from denseclip.deploy import export_model
    from denseclip.engine import build_config
    from denseclip.predictor import DenseCLIPPredictor

    config, height, width = MODELS[name]
    # Score thresholds 0: random heads would otherwise keep an arbitrary number of detections; with
    # 0 both runtimes post-process TEST.DETECTIONS_PER_IMAGE (100) detections (and masks), as a
    # trained model on a busy photo (docs/BENCHMARKS.md, "Keeping the workload realistic").
    opts = ["MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "TEST.SEM_SEG.MODE", "whole",
            "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    predictor = DenseCLIPPredictor(build_config(str(REPO_ROOT / config), opts))
    photo_rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    photo_bgr = np.ascontiguousarray(photo_rgb[:, :, ::-1])
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        manifest = export_model(predictor.model, predictor.cfg, folder, "onnx")
        export_s = time.perf_counter() - start
        onnx_bytes = folder_size(folder, [g["file"] for g in manifest["graphs"].values()])
        torch.save(predictor.model.state_dict(), os.path.join(folder, "model.pth"))
        pth_bytes = os.path.getsize(os.path.join(folder, "model.pth"))
        runtimes = {"eager": lambda: predictor(photo_bgr), "onnxruntime": None}
        exports = {"onnxruntime": onnx_infer.Export(folder, threads)}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_folder = os.path.join(folder, "int8")
            os.makedirs(int8_folder)
            for file in ("denseclip_export.json", "config.yaml"):
                os.link(os.path.join(folder, file), os.path.join(int8_folder, file))
            quantize_dynamic(os.path.join(folder, "model.onnx"), os.path.join(int8_folder, "model.onnx"), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
            exports["onnxruntime_int8"] = onnx_infer.Export(int8_folder, threads)
            onnx_int8_bytes = os.path.getsize(os.path.join(int8_folder, "model.onnx"))
        for key, export in exports.items():
            runtimes[key] = (lambda e: lambda: run_onnx(onnx_infer, e, photo_rgb))(export)
        times = {key: [] for key in runtimes}
        outputs = {}
        with torch.no_grad():
            for it in range(iters + 1):  # round 0 warms every runtime up
                for key, run in runtimes.items():
                    start = time.perf_counter()
                    outputs[key] = run()
                    if it:
                        times[key].append(time.perf_counter() - start)
    medians = {key: statistics.median(t) for key, t in times.items()}
    result = {
        "model": name, "config": config, "input": f"{width}x{height}", "threads": threads, "iters": iters,
        "eager_s": medians["eager"], "onnxruntime_s": medians["onnxruntime"], "ratio": medians["onnxruntime"] / medians["eager"],
        "paired_ratios": [o / e for o, e in zip(times["onnxruntime"], times["eager"])],
        "export_s": export_s, "onnx_mb": onnx_bytes / 2**20, "pytorch_state_dict_mb": pth_bytes / 2**20,
        "parity_vs_eager": distance(eager_as_numpy(outputs["eager"]), outputs["onnxruntime"]),
    }
    if int8:
        result.update({"int8_s": medians["onnxruntime_int8"], "int8_ratio": medians["onnxruntime_int8"] / medians["eager"],
                       "int8_onnx_mb": onnx_int8_bytes / 2**20,
                       "int8_vs_float_onnx": distance(outputs["onnxruntime"], outputs["onnxruntime_int8"])})
    return result


def eager_as_numpy(prediction: dict) -> dict:
    if "sem_seg" in prediction:
        return {"sem_seg": prediction["sem_seg"].numpy()}
    instances = prediction["instances"]
    return {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
            "classes": instances.pred_classes.numpy()}


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results = []
    print(f"{'model':<14}{'input':>10}{'eager s':>10}{'ORT s':>10}{'ORT/eager':>11}{'int8/eager':>11}{'ONNX MB':>10}"
          f"{'.pth MB':>10}{'export s':>10}")
    for name in args.models:
        r = benchmark(name, args.iters, threads, args.int8)
        results.append(r)
        int8 = f"{r['int8_ratio']:>11.2f}" if args.int8 else f"{'-':>11}"
        print(f"{r['model']:<14}{r['input']:>10}{r['eager_s']:>10.3f}{r['onnxruntime_s']:>10.3f}{r['ratio']:>11.2f}{int8}"
              f"{r['onnx_mb']:>10.1f}{r['pytorch_state_dict_mb']:>10.1f}{r['export_s']:>10.0f}", flush=True)
        print(f"  paired ORT/eager per round: {', '.join(f'{x:.2f}' for x in r['paired_ratios'])}; "
              f"ORT vs eager: {r['parity_vs_eager']}" + (f"; int8 vs float ORT: {r['int8_vs_float_onnx']}" if args.int8 else ""),
              flush=True)
    print(f"threads: {threads} (torch and ONNX Runtime), median of {args.iters} paired rounds; random weights")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
