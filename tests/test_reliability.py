"""Reliability: train_net.py killed with SIGKILL and resumed, and the failure modes of the project's
reliability list that no other test file covers. Runs on CPU on a small generated dataset.

Coverage map: each item of the reliability list -> the test that fails without its handling
(file::test). Items marked "here" are tested in this file.

Images (RobustDatasetMapper / read_image_robust)
  corrupt, truncated, zero bytes, missing .. test_data.py::test_bad_image_is_skipped_in_training_with_one_warning
                                             test_data.py::test_train_loader_keeps_going_past_bad_images
  grayscale, RGBA, (palette), CMYK ......... test_data.py::test_grayscale_rgba_palette_cmyk_become_rgb
  16-bit PNG ............................... test_data.py::test_16bit_png_is_scaled_not_clipped
  EXIF rotation ............................ test_data.py::test_exif_orientation_is_applied
                                             test_data.py::test_size_mismatch_is_a_bad_image
Annotations
  degenerate / out-of-image boxes .......... test_data.py::test_annotations_are_repaired,
                                             test_data.py::test_validation_summary_counts_fixes
  empty / self-intersecting polygons ....... test_data.py::test_annotations_are_repaired,
                                             test_data.py::test_without_masks_instances_keep_their_boxes
  unknown category ids ..................... test_data.py::test_validation_rejects_unknown_category_ids
  images without annotations, crowd-only ... test_data.py::test_images_without_or_with_crowd_only_annotations_are_kept
  a json that is not COCO .................. test_data.py::test_validation_rejects_files_that_are_not_coco
Vocabulary
  empty list, duplicates ................... test_text.py::test_vocabulary_validation,
                                             test_denseclip.py::test_vocabulary_validation_and_stock_heads
  very long names (truncation) ............. test_text.py::test_long_name_is_truncated_keeping_eot_with_one_warning
  non-ASCII names .......................... test_text.py::test_non_ascii_class_name
Training
  non-finite loss stops with name + iter ... test_engine.py::test_nonfinite_loss_raises_with_iteration_and_names
  AMP overflow skip visible in the log ..... test_engine.py::test_grad_scaler_overflow_is_logged (the hook);
                                             here: test_amp_overflow_logger_is_wired_into_the_trainer_log
                                             (the Trainer registers it and the warning reaches log.txt)
  kill -9 mid-run, --resume restores
  iteration/optimizer/scheduler/lr ......... here: test_kill_9_during_train_net_then_resume
                                             (units: test_engine.py::test_atomic_save_survives_a_crash_mid_write,
                                             test_engine.py::test_kill_9_while_saving_leaves_a_loadable_last_checkpoint,
                                             test_engine.py::test_resume_continues_from_last_checkpoint)
  checkpoint files readable like fvcore's .. here: test_atomic_checkpoints_get_the_umask_mode_not_0600
MODEL.WEIGHTS
  missing file ............................. test_engine.py::test_missing_weights_file_is_named
  another vocabulary size (error listing
  keys, or REINIT_VOCABULARY_MISMATCH) ..... test_engine.py::test_shape_mismatch_error_or_reinit (RetinaNet head);
                                             here: test_denseclip_vocabulary_size_mismatch_error_or_reinit
                                             (DenseCLIP: the score maps widen fpn_lateral5)
  another architecture ..................... here: test_weights_of_another_architecture_are_refused
                                             (no common key: e.g. CLIP weights as MODEL.WEIGHTS; same
                                             names, other shapes: error listing the keys)
  untrusted file, weights_only=True ........ test_engine.py::test_own_checkpoints_load_with_weights_only (the flag);
                                             here: test_malicious_pickle_as_model_weights_is_refused
MODEL.CLIP.PRETRAINED
  missing file ............................. test_backbone.py::test_missing_weights_file_is_named
  another architecture ..................... test_backbone.py::test_architecture_mismatch_names_keys
  sha256 ................................... test_backbone.py::test_checksum_mismatch_is_reported
  untrusted file ........................... here: test_malicious_pickle_as_clip_pretrained_is_refused
Config
  unknown key / wrong type in a file ....... test_engine.py::test_config_errors_name_the_key_and_file
  unknown key in an override ............... test_engine.py::test_config_errors_name_the_key_and_file
  wrong type / odd list in overrides ....... here: test_override_errors_name_the_key
"""
import builtins
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.nn as nn
from conftest import assert_exactly_equal
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer

from denseclip import add_denseclip_config
from denseclip.engine import (
    AtomicDetectionCheckpointer,
    ConfigError,
    GradScalerOverflowLogger,
    IncompatibleCheckpointError,
    Trainer,
    default_argument_parser,
    merge_overrides,
    setup,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "Synthetic" / "mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"
MAX_ITER = 12
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "4",
    "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
]


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def _one_thread_and_restore_flush_denormal():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads competing with other
    processes' threads run 10-30x slower. Trainer turns on flush-to-zero (process-wide): undone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Dict[str, Any]:
    """8 generated training images of 128 px, registered through --dataset (a spec, no hook)."""
    from denseclip.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    paths = generate_synthetic_dataset(str(root), num_train=8, num_val=1, image_size=128, seed=0)
    spec = f"reliability_shapes_train={paths['train_json']}:{paths['train_image_root']}"
    return {
        "root": str(root),
        "args": ["--dataset", spec],
        "opts": [
            "DATASETS.TRAIN", "('reliability_shapes_train',)",
            # The quickstart's own dataset keys, pointed at the same small generated data.
            "DATASETS.SYNTHETIC.ROOT", str(root), "DATASETS.SYNTHETIC.NUM_TRAIN", "8",
            "DATASETS.SYNTHETIC.NUM_VAL", "1", "DATASETS.SYNTHETIC.IMAGE_SIZE", "128",
        ],
    }


def cli_args(shapes: Dict[str, Any], out: Path, *extra: str) -> List[str]:
    return ["--config-file", str(CONFIG), *shapes["args"], *TINY, *shapes["opts"], "OUTPUT_DIR", str(out), *extra]


def subprocess_env(shapes: Dict[str, Any]) -> Dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", DENSECLIP_SYNTHETIC_ROOT=shapes["root"], OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def tiny_cfg(*opts: Any):
    """The quickstart config on CPU, not frozen (for in-process model builds)."""
    from denseclip.engine import build_config

    return build_config(str(CONFIG), ["MODEL.DEVICE", "cpu", *TINY, *map(str, opts)])


def training_iterations(out: Path) -> List[int]:
    """Iterations of metrics.json's training records; a line cut by the kill is skipped."""
    records = []
    for line in (out / "metrics.json").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [m["iteration"] for m in records if "total_loss" in m]




# ------------------------------------------------------------------------------ kill -9 / resume
def _kill_when_checkpoint_5_exists(proc: subprocess.Popen, out: Path, console: Path, timeout: float = 150.0) -> None:
    """SIGKILL ``proc`` as soon as model_0000005.pth (6 iterations done) or a later one appears:
    the trainer may be writing last_checkpoint, training on, or already saving the next one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        done = [p for p in out.glob("model_*.pth") if p.stem[6:].isdigit() and int(p.stem[6:]) >= 5]
        if done:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    log = console.read_text()
    proc.kill()
    proc.wait()
    pytest.fail(f"train_net.py wrote no checkpoint of iteration >= 5 (rc={proc.returncode}):\n{log[-5000:]}")


def test_kill_9_during_train_net_then_resume(shapes, tmp_path):
    out = tmp_path / "run"
    env = subprocess_env(shapes)
    args = cli_args(shapes, out, "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3")
    console = tmp_path / "killed_run.log"
    with open(console, "w") as log_file:  # a file, not a pipe nobody reads while it fills up
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
            cwd=str(REPO_ROOT), env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            _kill_when_checkpoint_5_exists(proc, out, console)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # last_checkpoint names a complete checkpoint file, never a temporary.
    last = (out / "last_checkpoint").read_text()
    assert last.startswith("model_") and last.endswith(".pth") and ".tmp" not in last, last
    assert (out / last).is_file()
    saved = torch.load(out / last, weights_only=True)
    iteration = saved["iteration"]
    assert last == f"model_{iteration:07d}.pth" and iteration in (2, 5, 8, 11)
    for f in out.glob("model_*.pth"):  # every visible checkpoint is complete
        torch.load(f, weights_only=True)

    # What the checkpoint says the state was: AdamW moments, step, lr; the scheduler's position.
    trainer_state = saved["trainer"]
    assert trainer_state["iteration"] == iteration
    opt_saved = trainer_state["_trainer"]["optimizer"]
    sched_saved = trainer_state["hooks"]["LRScheduler"]
    assert sched_saved["last_epoch"] == iteration + 1
    moments = {i: s for i, s in opt_saved["state"].items() if "exp_avg" in s}
    assert len(moments) > 10
    sample = sorted(moments)[:: max(1, len(moments) // 5)]
    assert any(moments[i]["exp_avg"].abs().sum() > 0 and moments[i]["exp_avg_sq"].abs().sum() > 0 for i in sample)
    for i in sample:
        assert float(moments[i]["step"]) == iteration + 1
    saved_lrs = [g["lr"] for g in opt_saved["param_groups"]]

    # Right after resume, in this process, on a copy of the killed run's directory (temporaries
    # a kill may have left included): the same state, exactly.
    inspect = tmp_path / "inspect"
    shutil.copytree(out, inspect)
    parsed = default_argument_parser().parse_args(["--resume", *cli_args(shapes, inspect)])
    parsed.opts = [*parsed.opts, "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3"]
    cfg = setup(parsed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == iteration + 1
    assert trainer.iter == iteration
    resumed = trainer.optimizer.state_dict()
    for i in sample:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert_exactly_equal(resumed["state"][i][key], moments[i][key], f"optimizer.state[{i}].{key}")
    assert_exactly_equal(resumed, opt_saved, "optimizer")
    assert_exactly_equal(trainer.scheduler.state_dict(), sched_saved, "scheduler")
    current_lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert current_lrs == saved_lrs
    assert trainer.scheduler.get_lr() == current_lrs  # the schedule continues where it stopped
    del trainer

    # Resume the killed run itself to the end.
    resumed_proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--resume", *args],
        cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=300,
    )
    log = resumed_proc.stdout + resumed_proc.stderr
    assert resumed_proc.returncode == 0, log[-6000:]
    assert f"Starting training from iteration {iteration + 1}" in log
    assert (out / "model_final.pth").is_file()
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == MAX_ITER - 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob(".*.tmp"))  # the resumed run removed what the kill left
    iterations = training_iterations(out)
    resumed_part = iterations[len(iterations) - iterations[::-1].index(iteration + 1) - 1:]
    assert resumed_part == list(range(iteration + 1, MAX_ITER))
    assert iterations[-1] == MAX_ITER - 1


def test_atomic_checkpoints_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path), save_to_disk=True).save("model_0000000")
    finally:
        os.umask(old)
    for name in ("model_0000000.pth", "last_checkpoint"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# ------------------------------------------------------------------------------ AMP overflow log
class FakeGradScaler:
    """GradScaler's get_scale() as an overflow at the second step would move it."""

    def __init__(self) -> None:
        self._scales = iter([65536.0, 65536.0, 32768.0, 32768.0, 32768.0])

    def get_scale(self) -> float:
        return next(self._scales)


def test_amp_overflow_logger_is_wired_into_the_trainer_log(shapes, tmp_path, monkeypatch):
    """float16 AMP needs CUDA; a SimpleTrainer carrying a (fake) grad_scaler stands in for it, so this
    checks that the Trainer registers GradScalerOverflowLogger and its warning reaches log.txt."""

    def step_trainer_with_scaler(cls, cfg, model, data_loader, optimizer):
        trainer = SimpleTrainer(model, data_loader, optimizer)
        trainer.grad_scaler = FakeGradScaler()
        return trainer

    monkeypatch.setattr(Trainer, "build_step_trainer", classmethod(step_trainer_with_scaler))
    parsed = default_argument_parser().parse_args(cli_args(shapes, tmp_path))
    parsed.opts += ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100"]
    trainer = Trainer(setup(parsed))
    assert sum(isinstance(h, GradScalerOverflowLogger) for h in trainer._hooks) == 1
    trainer.resume_or_load(resume=False)
    trainer.train()
    log = (tmp_path / "log.txt").read_text()
    assert "AMP: inf/NaN gradients at iteration 1: optimizer step skipped, loss scale 65536 -> 32768" in log
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines() if line.strip()]
    assert [m["amp/skipped_steps"] for m in metrics if "amp/skipped_steps" in m][-1] == 1


# ------------------------------------------------------------------------------ MODEL.WEIGHTS
def test_denseclip_vocabulary_size_mismatch_error_or_reinit(tmp_path):
    """DenseCLIP's score maps add one FPN input channel per class: 8 classes -> 3 changes
    fpn_lateral5; the error lists it; REINIT_VOCABULARY_MISMATCH keeps it fresh, loads the rest."""
    from detectron2.modeling import build_model

    eight = "['a','b','c','d','e','f','g','h']"
    source = build_model(tiny_cfg("MODEL.DENSECLIP.CLASS_NAMES", eight))
    path = tmp_path / "eight_classes.pth"
    torch.save({"model": source.state_dict()}, path)

    cfg = tiny_cfg("MODEL.DENSECLIP.CLASS_NAMES", "['cat','dog','bird']", "MODEL.WEIGHTS", str(path))
    target = build_model(cfg)
    with pytest.raises(IncompatibleCheckpointError) as err:
        Trainer.build_checkpointer(cfg, target).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert "fpn.fpn_lateral5.weight: checkpoint (64, 520, 1, 1) vs model (64, 515, 1, 1)" in str(err.value)
    assert "MODEL.REINIT_VOCABULARY_MISMATCH" in str(err.value)

    cfg.MODEL.REINIT_VOCABULARY_MISMATCH = True
    target = build_model(cfg)
    fresh = target.fpn.fpn_lateral5.weight.detach().clone()
    Trainer.build_checkpointer(cfg, target).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert torch.equal(target.fpn.fpn_lateral5.weight, fresh)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        if key != "fpn.fpn_lateral5.weight":
            assert torch.equal(loaded[key], value), key


def test_weights_of_another_architecture_are_refused(tmp_path):
    from detectron2.modeling import build_model

    from denseclip.clip_loading import create_clip_model

    cfg = tiny_cfg()
    model = build_model(cfg)

    # A file without a single tensor name of the model (here: CLIP weights, which belong in
    # MODEL.CLIP.PRETRAINED) would otherwise only log "not found" warnings and train from scratch.
    clip_file = tmp_path / "RN-tiny-clip.pth"
    torch.save(create_clip_model("RN-tiny", model_config_file="RN-tiny.json").state_dict(), clip_file)
    with pytest.raises(IncompatibleCheckpointError, match=r"shares no tensor name with the model") as err:
        Trainer.build_checkpointer(cfg, model).resume_or_load(str(clip_file), resume=False)
    message = str(err.value)
    assert str(clip_file) in message and "token_embedding.weight" in message and "backbone." in message
    assert "MODEL.CLIP.PRETRAINED" in message
    # Even with the vocabulary-mismatch policy: nothing of that file can be a vocabulary tensor.
    cfg.MODEL.REINIT_VOCABULARY_MISMATCH = True
    with pytest.raises(IncompatibleCheckpointError, match=r"shares no tensor name"):
        Trainer.build_checkpointer(cfg, model).resume_or_load(str(clip_file), resume=False)

    # Same tensor names, other widths (another FPN/CLIP size): an error listing the keys.
    wide = build_model(tiny_cfg("MODEL.FPN.OUT_CHANNELS", 32))
    wide_file = tmp_path / "fpn32.pth"
    torch.save({"model": wide.state_dict()}, wide_file)
    cfg.MODEL.REINIT_VOCABULARY_MISMATCH = False
    with pytest.raises(IncompatibleCheckpointError, match=r"fpn\.fpn_output2\.weight: checkpoint \(32,"):
        Trainer.build_checkpointer(cfg, model).resume_or_load(str(wide_file), resume=False)


class _Payload:
    """Unpickling this runs ``exec``: it writes a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _malicious_files(tmp_path: Path) -> Dict[str, Path]:
    """The payload inside a real checkpoint layout: torch's zip format, its legacy format, and a
    bare pickle, each with its own marker."""
    files = {}
    for kind in ("zip", "legacy", "pickle"):
        marker = tmp_path / f"pwned_{kind}"
        payload = {"model": {"weight": torch.zeros(2)}, "extra": _Payload(marker)}
        path = tmp_path / f"evil_{kind}.pth"
        if kind == "pickle":
            path.write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, path, _use_new_zipfile_serialization=kind == "zip")
        files[kind] = path
    return files


def test_malicious_pickle_as_model_weights_is_refused(tmp_path):
    files = _malicious_files(tmp_path)
    # The payload is real: an unrestricted torch.load runs it.
    control = tmp_path / "control"
    control.mkdir()
    torch.save({"x": _Payload(control / "ran")}, control / "c.pth")
    torch.load(control / "c.pth", weights_only=False)
    assert (control / "ran").read_text() == "code ran"

    for kind, path in files.items():
        cfg = tiny_cfg("MODEL.WEIGHTS", str(path))
        model = nn.Linear(2, 1)
        with pytest.raises(RuntimeError, match=r"weights_only=True\) refuses to unpickle"):
            Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        assert not (tmp_path / f"pwned_{kind}").exists(), f"code in a {kind} checkpoint ran"


def test_malicious_pickle_as_clip_pretrained_is_refused(tmp_path):
    from denseclip.clip_loading import create_clip_model

    for kind, path in _malicious_files(tmp_path).items():
        with pytest.raises(RuntimeError, match="Could not read CLIP weights"):
            create_clip_model("RN-tiny", pretrained=str(path), model_config_file="RN-tiny.json")
        assert not (tmp_path / f"pwned_{kind}").exists(), f"code in a {kind} CLIP file ran"


# ------------------------------------------------------------------------------ config errors
def test_override_errors_name_the_key():
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITER"):
        merge_overrides(cfg, ["SOLVER.MAX_ITER", "ten"])
    with pytest.raises(ConfigError, match=r"MODEL\.DENSECLIP\.CLASS_NAMES"):
        merge_overrides(cfg, ["MODEL.DENSECLIP.CLASS_NAMES", "cat"])
    with pytest.raises(ConfigError, match=r"Invalid config override\(s\).*odd length"):
        merge_overrides(cfg, ["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match=r"Non-existent key: MODEL\.DENSECLIP\.NOT_A_KEY"):
        merge_overrides(cfg, ["MODEL.DENSECLIP.NOT_A_KEY", "1"])
