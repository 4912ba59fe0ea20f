"""The CPU dry run of the GPU check (scripts/gpu_check.sh --device cpu --tiny), so that the script
and python tools/gpu_check.py cannot rot while nobody has a GPU: same code path as on CUDA
(AMP training with bfloat16 autocast, evaluation, demo, AMP benchmark, report), tiny sizes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_checking import TRAIN_RUNS  # tools/ (pytest.ini pythonpath)
from gpu_checking import cli as gpu_check

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_SITE=str(out / "site"))
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--tiny", "--data", "synthetic",
                           "--output", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "report.json").read_text()), out


def test_dry_run_trains_evaluates_and_draws_every_run(dry_run):
    report, _ = dry_run
    assert report["passed"] is True and report["device"] == "cpu" and report["tiny"] is True
    assert report["data"]["name"] == "synthetic_shapes"
    assert [r["run"] for r in report["runs"]] == [r.name for r in TRAIN_RUNS]
    for r in report["runs"]:
        assert r["errors"] == {}, r["errors"]
        assert r["precision"] == "bfloat16" and r["step_trainer"] == "AutocastTrainer"
        assert r["iterations"] == 2 and r["train_seconds"] > 0
        assert "total_loss" in r["losses"]
        assert all(v["finite"] and math.isfinite(v["last"]) for v in r["losses"].values())
        ev = r["evaluation"]
        assert ev["images"] == 2 and ev["text_encoder_calls_after_first_image"] == 0
        assert "bbox" in ev["metrics"]
        assert r["demo"]["images"] == 1 and r["demo"]["failed"] == [] and r["demo"]["written"] >= 1


def test_dry_run_benchmarks_with_amp_and_reports_the_gpu_figures(dry_run):
    report, _ = dry_run
    [bench] = report["benchmarks"]
    assert bench["mode"] == "amp" and bench["amp_dtype"] == "bfloat16"
    configs = {c["name"]: c for c in bench["headline"]["configs"].values()}
    assert set(configs) == {"mask_rcnn_clip_R50_FPN_1x", "mask_rcnn_denseclip_R50_FPN_1x"}
    for c in configs.values():
        assert c["images_per_s_batch1"] > 0 and c["throughput_images_per_s"] > 0
        assert c["train_peak_memory_mb"] > 0
        for phase in ("inference", "throughput", "train"):
            assert c["achieved_tflops"][phase] > 0 and c["fraction_of_peak"][phase] > 0
    assert configs["mask_rcnn_denseclip_R50_FPN_1x"]["text_encoder_calls_timed"] == 0
    assert {(p["phase"]) for p in bench["headline"]["paired"]} == {"inference", "train"}
    checks = {c["check"]: c for c in report["checks"]}
    # Timings of a dry run are not checked; the GPU targets are N/A off CUDA.
    assert all(not c["enforced"] for name, c in checks.items() if "time ratio" in name)
    assert checks["AMP training peak memory mask_rcnn_denseclip_R50_FPN_1x, batch 2 (MB)"]["status"] == "N/A"
    assert not [c for c in report["checks"] if c["status"] == "FAIL" and c["enforced"]]


def test_dry_run_markdown_report(dry_run):
    report, out = dry_run
    text = (out / "report.md").read_text()
    assert text.startswith("# DenseCLIP GPU check") and "**PASSED**" in text
    for heading in ("## Training (AMP), evaluation, demo", "## Benchmark", "## Checks"):
        assert heading in text
    assert all(r.name in text for r in TRAIN_RUNS)
    assert (out / "benchmark_amp.json").is_file() and (out / "benchmark_amp.md").is_file()


@pytest.fixture
def default_synthetic_registration():
    """The in-process run registers the synthetic set under its output folder; put back the
    package's default registration afterwards for the other tests."""
    from denseclip.data import register_synthetic_dataset

    yield
    register_synthetic_dataset()


def test_a_non_finite_loss_fails_the_check(tmp_path, default_synthetic_registration):
    """An absurd learning rate makes the second iteration's loss non-finite: the run is recorded as
    failed, the report says so, and the exit status is non-zero."""
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--data", "synthetic", "--steps", "train", "--runs", "retinanet",
                         "--output", str(tmp_path), "--opts", "SOLVER.BASE_LR", "1e30"])
    assert rc == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False
    [run] = report["runs"]
    assert "FloatingPointError" in run["errors"]["train"]
    failed = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert failed and all(c["enforced"] for c in failed)
    assert "**FAILED**" in (tmp_path / "report.md").read_text()
