"""Smoke run of the benchmark tool (python tools/benchmark.py) on CPU at tiny sizes.

Checks that every field of the JSON report is there (times with their spread, memory, FLOPs,
parameters, ratios, targets, text-encoder call count) and that the Markdown report is written.
Never asserts on a time value: timings on shared CPUs are noise.
"""
import json
import math

import pytest

from benchmarking import cli, configs, machine, paired, profiling, targets  # tools/ (pytest.ini pythonpath)

PAIR = ["COCO/mask_rcnn_clip_R50_FPN_1x.yaml", "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"]

# RN-tiny image/text towers and small heads: the architecture of the COCO configs, scaled down.
TINY_OPTS = [
    "MODEL.CLIP.MODEL_NAME", "RN-tiny",
    "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
    "TEST.DETECTIONS_PER_IMAGE", "8",
]

TIME_FIELDS = ("median_ms", "mean_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "max_ms", "repeats", "times_ms")
MEMORY_FIELDS = ("method", "peak_mb", "before_mb", "peak_delta_mb")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    argv = [
        "--configs", *PAIR,
        "--device", "cpu",
        "--sizes", "128x128",
        "--flops-size", "128x128",
        "--warmup", "1",
        "--repeats", "2",
        "--batch-train", "2",
        "--batch-throughput", "2",
        "--profile",
        "--peak-tflops", "1.0",
        "--output-json", str(out / "bench.json"),
        "--output-md", str(out / "bench.md"),
        "--opts", *TINY_OPTS,
    ]
    cli.main(argv)
    with open(out / "bench.json") as f:
        data = json.load(f)
    return data, out


def test_report_header(report):
    data, _ = report
    for key in ("date", "command", "machine", "settings", "targets", "results", "comparisons", "checks",
                "all_targets_passed"):
        assert key in data, key
    assert data["command"].startswith("python tools/benchmark.py")
    assert data["machine"]["cpu"] and data["machine"]["torch"]
    assert data["settings"]["sizes"] == ["128x128"] and data["settings"]["flops_size"] == "128x128"
    assert data["settings"]["opts"] == TINY_OPTS
    assert [r["name"] for r in data["results"]] == ["mask_rcnn_clip_R50_FPN_1x", "mask_rcnn_denseclip_R50_FPN_1x"]


def test_every_config_has_times_memory_flops_params(report):
    data, _ = report
    for r in data["results"]:
        assert r["errors"] == {}, r["errors"]
        for key in ("total", "trainable", "text_encoder", "excluding_frozen_text_encoder"):
            assert _is_number(r["params"][key]) and r["params"][key] >= 0
        assert r["params"]["trainable"] <= r["params"]["total"]
        flops = r["flops"]
        assert _is_number(flops["gflops"]) and flops["gflops"] > 0
        assert isinstance(flops["unsupported_ops"], dict)
        assert flops["by_component_gflops"]["image_encoder"] > 0
        assert flops["by_component_gflops"]["fpn"] > 0
        assert r["frozen_bn_calibrated"] == 0  # CLIP encoders use BatchNorm, not FrozenBN
        entry = r["sizes"]["128x128"]
        for phase in ("train", "inference", "throughput"):
            timing = entry[phase]
            for key in TIME_FIELDS:
                assert key in timing, (phase, key)
            assert timing["repeats"] == 2 and len(timing["times_ms"]) == 2
            assert all(_is_number(timing[k]) for k in TIME_FIELDS if k != "times_ms")
            for key in MEMORY_FIELDS:
                assert key in timing["memory"], (phase, key)
            assert _is_number(timing["memory"]["peak_mb"])
        # Same workload for every config: POST_NMS_TOPK_TEST proposals (at most), DETECTIONS_PER_IMAGE detections.
        for workload in (entry["workload"], flops["workload"]):
            assert len(workload["proposals_per_image"]) == 1 and 0 < workload["proposals_per_image"][0] <= 32
            assert workload["detections_per_image"] == [8]
        assert entry["train"]["batch"] == 2
        assert entry["inference"]["batch"] == 1
        assert entry["throughput"]["batch"] == 2
        for key in ("images_per_s", "images_per_s_min", "images_per_s_max", "images_per_s_q1", "images_per_s_q3"):
            assert _is_number(entry["throughput"][key])
        util = entry["utilization"]
        assert util["peak_tflops"] == 1.0 and util["gmacs_per_image"] == flops["gflops"]  # FLOPs counted at this size
        for phase in ("inference", "throughput", "train"):
            assert _is_number(util[phase]["achieved_tflops"]) and util[phase]["achieved_tflops"] > 0
            assert util[phase]["fraction_of_peak"] == pytest.approx(util[phase]["achieved_tflops"] / 1.0)
        profile = entry["profile"]
        assert profile["sort_by"] == "self_cpu_time_total" and profile["repeats"] == 2
        assert 0 < len(profile["ops"]) <= profiling.PROFILE_TOP_OPS
        assert any(op["op"] == "aten::mkldnn_convolution" or "conv" in op["op"] for op in profile["ops"])
        assert all(_is_number(op["self_ms"]) and op["calls"] >= 1 for op in profile["ops"])
        assert profile["ops"] == sorted(profile["ops"], key=lambda op: -op["self_ms"])
        components = entry["breakdown"]["components"]
        for key in ("preprocess", "image_encoder", "fpn", "proposal_generator", "roi_heads", "other", "total"):
            assert key in components
            assert _is_number(components[key]["median_ms"])


def test_denseclip_does_not_run_the_text_encoder_per_image(report):
    data, _ = report
    baseline, dense = data["results"]
    assert baseline["variant"] == "clip" and dense["variant"] == "denseclip"
    assert baseline["sizes"]["128x128"]["text_encoder_calls_timed"] is None
    entry = dense["sizes"]["128x128"]
    assert entry["text_encoder_calls_timed"] == 0
    # Training dropped the cached text embeddings: the first inference after it (the workload probe)
    # computes them once, and neither warm-up nor timed repetitions run the encoder again.
    assert entry["text_encoder_calls"]["first"] == 1 and entry["text_encoder_calls"]["warmup"] == 0
    assert dense["params"]["text_encoder_frozen"] > 0
    # DenseCLIP's extra components appear in its breakdown and FLOPs.
    components = entry["breakdown"]["components"]
    for key in ("attention_pool", "text_encoder", "context_decoder", "score_maps"):
        assert key in components
    assert _is_number(entry["breakdown"]["decoder_and_score_maps_fraction"])
    assert dense["flops"]["by_component_gflops"]["context_decoder"] > 0


def test_comparison_ratios_and_targets(report):
    data, _ = report
    comparisons = [c for c in data["comparisons"] if c["kind"] == "denseclip_vs_clip_baseline"]
    assert len(comparisons) == 1
    comp = comparisons[0]
    assert comp["subject"] == "mask_rcnn_denseclip_R50_FPN_1x" and comp["reference"] == "mask_rcnn_clip_R50_FPN_1x"
    for key in ("flops_ratio", "params_ratio", "params_excluding_frozen_text_ratio", "trainable_params_ratio"):
        assert _is_number(comp[key]) and comp[key] > 0
    ratios = comp["sizes"]["128x128"]
    for key in ("train_time_ratio", "inference_time_ratio", "throughput_ratio", "train_memory_ratio",
                "inference_memory_ratio", "throughput_memory_ratio"):
        assert _is_number(ratios[key]) and ratios[key] > 0, key
    # Paired rounds: both models resident, timed in alternation; the time targets use their medians.
    for phase in ("inference", "train"):
        paired = comp["paired"]["128x128"][phase]
        ratio = paired["ratio"]
        assert ratio["rounds"] == 2 and len(ratio["ratios"]) == 2
        assert all(_is_number(ratio[k]) and ratio[k] > 0 for k in ("median", "q1", "q3", "min", "max"))
        assert ratio["min"] <= ratio["median"] <= ratio["max"]
        for side in ("subject", "reference"):
            assert paired[side]["repeats"] == 2 and _is_number(paired[side]["median_ms"])
    assert data["settings"]["paired_repeats"] == 2 and data["settings"]["skip_paired"] is False
    checks = {c["check"]: c for c in data["checks"]}
    inference_check = checks["inference time ratio mask_rcnn_denseclip_R50_FPN_1x / mask_rcnn_clip_R50_FPN_1x @128x128"]
    assert inference_check["value"] == comp["paired"]["128x128"]["inference"]["ratio"]["median"]
    assert "alternating rounds" in inference_check["note"]
    assert any(name.startswith("training time ratio") for name in checks)
    text_checks = [c for name, c in checks.items() if name.startswith("text encoder calls")]
    assert text_checks and all(c["status"] == "PASS" for c in text_checks)
    assert all(c["status"] in ("PASS", "FAIL", "N/A") for c in data["checks"])


def test_markdown_report(report):
    data, out = report
    text = (out / "bench.md").read_text()
    assert "# DenseCLIP benchmark" in text
    assert data["command"] in text
    assert "mask_rcnn_denseclip_R50_FPN_1x" in text and "## Targets" in text
    assert "## Paired rounds" in text and "## Top operators of inference" in text
    assert "Utilisation of 1.0 TFLOP/s peak" in text


def test_alternating_rounds_swap_the_order_and_pair_every_round():
    calls = []
    out = paired.time_alternating(lambda: calls.append("S"), lambda: calls.append("R"), warmup=1, repeats=4,
                                     device="cpu")
    assert "".join(calls) == "SR" + "SR" + "RS" + "SR" + "RS"
    assert out["ratio"]["rounds"] == 4 and len(out["ratio"]["ratios"]) == 4
    assert out["subject"]["repeats"] == out["reference"]["repeats"] == 4


def test_time_targets_use_the_paired_median_where_measured():
    def result(name, variant):
        return {"name": name, "variant": variant, "detector": "retinanet", "encoder": "RN50", "paper": None,
                "flops": None, "params": {}, "sizes": {"64x64": {"inference": {"median_ms": 130.0 if variant == "denseclip" else 100.0},
                                                                   "train": {"median_ms": 100.0}}}}

    dense, clip = result("retinanet_denseclip_R50_FPN_1x", "denseclip"), result("retinanet_clip_R50_FPN_1x", "clip")
    ratio = {"median": 1.05, "q1": 1.04, "q3": 1.06, "min": 1.03, "max": 1.07, "rounds": 5, "ratios": []}
    args = cli.build_parser().parse_args([])
    for rounds, expected_value, expected_status in ((None, 1.3, "FAIL"), ({"64x64": {"inference": {"ratio": ratio}}}, 1.05, "PASS")):
        checks = targets.evaluate_targets([dense, clip], [targets.compare(dense, clip, "denseclip_vs_clip_baseline", rounds)], args)
        check = next(c for c in checks if c["check"].startswith("inference time ratio"))
        assert check["value"] == pytest.approx(expected_value) and check["status"] == expected_status
        assert ("alternating rounds" in check["note"]) == (rounds is not None)


def test_pairing_with_detectron2_stock_and_paper_flops():
    """Pairs and paper FLOP targets, without building models."""
    def result(name, variant, detector="mask_rcnn", encoder="RN50", gflops=None):
        return {"name": name, "variant": variant, "detector": detector, "encoder": encoder,
                "paper": configs.PAPER.get((detector, encoder, variant)),
                "flops": {"gflops": gflops} if gflops else None, "params": {}, "sizes": {}}

    results = [
        result("mask_rcnn_clip_R50_FPN_1x", "clip", gflops=300.0),
        result("mask_rcnn_denseclip_R50_FPN_1x", "denseclip", gflops=380.0),
        result("mask_rcnn_R50_FPN_1x_detectron2", "detectron2", encoder="R50", gflops=250.0),
    ]
    pairs = [(a["name"], b["name"], kind) for a, b, kind in targets.find_pairs(results)]
    assert ("mask_rcnn_denseclip_R50_FPN_1x", "mask_rcnn_clip_R50_FPN_1x", "denseclip_vs_clip_baseline") in pairs
    assert ("mask_rcnn_denseclip_R50_FPN_1x", "mask_rcnn_R50_FPN_1x_detectron2", "vs_detectron2_stock") in pairs
    args = cli.build_parser().parse_args([])
    assert tuple(args.flops_size) == (1280, 800) and args.sizes == [(1333, 800)]
    comparisons = [targets.compare(a, b, kind) for a, b, kind in targets.find_pairs(results)]
    checks = {c["check"]: c["status"] for c in targets.evaluate_targets(results, comparisons, args)}
    assert checks["GFLOPs mask_rcnn_clip_R50_FPN_1x vs paper 301 G"] == "PASS"
    assert checks["GFLOPs mask_rcnn_denseclip_R50_FPN_1x vs paper 327 G"] == "FAIL"


def test_stock_detectron2_config_is_detectron2s_r50_fpn(make_cfg):
    cfg = make_cfg("COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert list(cfg.MODEL.PIXEL_MEAN) == [103.530, 116.280, 123.675] and list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.MASK_ON
    assert configs.describe_config(cfg)["variant"] == "detectron2"


def test_utilization_arithmetic_and_gpu_peaks():
    entry = {"inference": {"batch": 1, "median_ms": 100.0}, "throughput": {"batch": 8, "median_ms": 400.0},
             "train": {"batch": 2, "median_ms": 1000.0}}
    util = machine.utilization(entry, gmacs_per_image=10.0, peak=4.0)
    # 10 images/s x 10 GMACs x 2 flops = 0.2 TFLOP/s; 20 images/s -> 0.4; training 2 images/s x 3 -> 0.12.
    assert util["inference"]["achieved_tflops"] == pytest.approx(0.2)
    assert util["throughput"]["achieved_tflops"] == pytest.approx(0.4)
    assert util["train"]["achieved_tflops"] == pytest.approx(0.12)
    assert util["train"]["fraction_of_peak"] == pytest.approx(0.03)
    args = cli.build_parser().parse_args([])
    assert machine.peak_tflops(args, {"gpu": "NVIDIA H100 80GB HBM3"}) == 989.4
    assert machine.peak_tflops(args, {"gpu": "NVIDIA H100 PCIe"}) == 756.5
    assert machine.peak_tflops(args, {"gpu": "NVIDIA H200"}) == 989.4
    assert machine.peak_tflops(args, {"gpu": None}) is None  # CPU: no assumed peak
    args = cli.build_parser().parse_args(["--peak-tflops", "2.5"])
    assert machine.peak_tflops(args, {"gpu": "NVIDIA H100 80GB HBM3"}) == 2.5
