"""Training engine: optimizer recipe, schedule, checkpoints, launcher and train_net.py end to end.

Everything runs on CPU with random CLIP weights and a tiny COCO-format dataset generated here.
"""
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_exactly_equal
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from denseclip.engine import (
    AtomicDetectionCheckpointer,
    AutocastTrainer,
    ConfigError,
    GradScalerOverflowLogger,
    IncompatibleCheckpointError,
    LaunchError,
    Trainer,
    build_config,
    build_lr_scheduler,
    build_optimizer,
    cpu_processes_requested,
    default_argument_parser,
    launch,
    merge_config_file,
    merge_overrides,
    model_parameter_groups,
    resolve_step_fractions,
    setup,
)
from denseclip.evaluation import build_coco_evaluator, fast_coco_eval_available

REPO_ROOT = Path(__file__).resolve().parents[1]
RETINANET = "COCO/retinanet_clip_R50_FPN_1x.yaml"
MASK_RCNN = "COCO/mask_rcnn_clip_R50_FPN_1x.yaml"
CATEGORIES = [{"id": 1, "name": "red box"}, {"id": 2, "name": "blue box"}]

# Small inputs, 2 classes, metrics written every iteration, no data-loader worker processes.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.RETINANET.NUM_CLASSES", "2", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    "SOLVER.LOG_PERIOD", "1", "SOLVER.WARMUP_ITERS", "2",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
]


# ------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _restore_flush_denormal():
    """Trainer turns on flush-to-zero for CPU training (process-wide); keep other test modules on
    PyTorch's default."""
    yield
    torch.set_flush_denormal(False)


def write_tiny_coco(root: Path, num_images: int = 4, seed: int = 0) -> Path:
    """Random-noise images with two rectangles each (boxes and polygons), as a COCO json."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for i in range(num_images):
        h, w = 96, 128
        cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), rng.randint(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i:03d}.jpg", "height": h, "width": w})
        for cat in CATEGORIES:
            x, y = int(rng.randint(0, 60)), int(rng.randint(0, 40))
            bw, bh = int(rng.randint(20, 60)), int(rng.randint(20, 50))
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat["id"],
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0,
                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
            })
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return json_file


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_coco")
    json_file = write_tiny_coco(root)
    spec = {"json": str(json_file), "images": str(root / "images")}
    # In-process tests use the dataset under these names; train_net.py gets --dataset specs.
    for name in ("engine_tiny_train", "engine_tiny_val"):
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, spec["json"], spec["images"])
    return spec


def dataset_args(data: Dict[str, str]) -> List[str]:
    return [
        "--dataset", f"engine_tiny_train={data['json']}:{data['images']}",
        "--dataset", f"engine_tiny_val={data['json']}:{data['images']}",
    ]


def run_train_net(args: Sequence[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=str(REPO_ROOT),
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, f"train_net.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def train_args(data: Dict[str, str], out: Path, *extra: str, config: str = RETINANET) -> List[str]:
    return [
        "--config-file", str(REPO_ROOT / "configs" / config), "--dist-url", "auto", *dataset_args(data),
        "MODEL.CLIP.PRETRAINED", "", *TINY_OPTS,
        "DATASETS.TRAIN", "('engine_tiny_train',)", "OUTPUT_DIR", str(out), *extra,
    ]


def read_metrics(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]


def training_metrics(out: Path) -> List[Dict[str, Any]]:
    return [m for m in read_metrics(out) if "total_loss" in m]




class ToyCLIPDetector(nn.Module):
    """Parts laid out like the real DenseCLIP models': the image encoder as ``backbone``, a text side
    with CLIP's text tower (frozen unless asked) and a learnable context, a positional embedding, a
    gamma, an FPN conv, norm layers and a head."""

    def __init__(self, freeze_text_tower: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fpn_lateral = nn.Conv2d(4, 4, 1)
        self.text_side = nn.Module()
        self.text_side.prompt_encoder = nn.Module()
        self.text_side.prompt_encoder.clip_text = nn.Module()
        self.text_tower.proj = nn.Linear(4, 4)
        self.text_tower.positional_embedding = nn.Parameter(torch.randn(5, 4))
        self.text_tower.requires_grad_(not freeze_text_tower)
        self.text_side.prompt_encoder.context = nn.Parameter(torch.randn(8, 4))  # learnable prompt
        self.gamma = nn.Parameter(torch.full((4,), 1e-4))
        self.context_decoder = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    @property
    def text_tower(self) -> nn.Module:
        return self.text_side.prompt_encoder.clip_text

    @property
    def context(self) -> nn.Parameter:
        return self.text_side.prompt_encoder.context


def lr_and_wd(optimizer: torch.optim.Optimizer) -> Dict[nn.Parameter, Dict[str, float]]:
    return {p: {"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups for p in g["params"]}


# ------------------------------------------------------------------------------- optimizer
def test_param_groups_of_a_real_model(make_cfg):
    cfg = make_cfg(MASK_RCNN, ["MODEL.CLIP.FREEZE_AT", "2", "SOLVER.WEIGHT_DECAY", "1e-4", *TINY_OPTS])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    groups = lr_and_wd(optimizer)
    base = cfg.SOLVER.BASE_LR
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen, "FREEZE_AT 2 should freeze the stem"
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for p in m.parameters(recurse=False)
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p not in groups, f"frozen {name} is in the optimizer"
            continue
        hyper = groups[p]
        expected_lr = base * (0.1 if name.startswith("backbone.bottom_up.") else 1.0)
        assert hyper["lr"] == pytest.approx(expected_lr), name
        if id(p) in norm_params or (p.ndim <= 1 and not name.endswith("bias")):
            assert hyper["weight_decay"] == 0.0, name
        else:
            assert hyper["weight_decay"] == pytest.approx(1e-4), name
    assert any(n.startswith("backbone.bottom_up.") for n, p in model.named_parameters() if p.requires_grad)
    # Groups are merged by hyper-parameters, not one per tensor.
    assert len(optimizer.param_groups) <= 8


def test_param_groups_of_a_denseclip_model(make_cfg):
    cfg = make_cfg("Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml", ["SOLVER.BACKBONE_MULTIPLIER", "0.1"])
    model = build_model(cfg)
    groups = lr_and_wd(build_optimizer(cfg, model))
    base = cfg.SOLVER.BASE_LR
    named = dict(model.named_parameters())
    assert groups[named["text_side.prompt_encoder.context"]] == {"lr": pytest.approx(base), "weight_decay": 0.0}
    assert groups[named["text_side.gamma"]]["weight_decay"] == 0.0
    assert groups[named["backbone.visual.attnpool.positional_embedding"]] == {
        "lr": pytest.approx(0.1 * base), "weight_decay": 0.0}
    tower = [n for n in named if n.startswith("text_side.prompt_encoder.clip_text.")]
    assert tower and all(named[n] not in groups for n in tower)
    decoder = [n for n in named if n.startswith("text_side.context_decoder.") and n.endswith("weight")
               and named[n].ndim == 2]
    assert decoder and all(groups[named[n]]["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY for n in decoder)
    roles = model_parameter_groups(model)
    assert sum(len(v) for v in roles.values()) == len(named)
    assert {n for n, _ in roles["text_tower"]} == set(tower)
    assert [n for n, _ in roles["text_prompt"]] == ["text_side.prompt_encoder.context"]
    assert all(n.startswith("backbone.") for n, _ in roles["image_encoder"])


def test_text_encoder_multiplier_trains_the_real_text_tower(make_cfg, make_batch):
    """SOLVER.TEXT_ENCODER_MULTIPLIER > 0 trains CLIP's text tower at that multiplier (0: frozen)."""
    opts = ["SOLVER.TEXT_ENCODER_MULTIPLIER", "0.5", "MODEL.DENSECLIP.CLASS_NAMES", ["a", "b", "c"]]
    cfg = make_cfg("Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml", opts)
    model = build_model(cfg)
    tower = dict(model.text_side.prompt_encoder.clip_text.named_parameters())
    assert tower and all(p.requires_grad for p in tower.values())
    optimizer = build_optimizer(cfg, model)
    groups = lr_and_wd(optimizer)
    for name, p in tower.items():
        assert groups[p]["lr"] == pytest.approx(0.5 * cfg.SOLVER.BASE_LR), name
    before = {n: p.detach().clone() for n, p in tower.items()}
    model.train()
    with EventStorage(0):
        losses = model(make_batch(num_images=2, size=(64, 64), num_classes=3))
    sum(losses.values()).backward()
    optimizer.step()
    changed = [n for n, p in tower.items() if not torch.equal(p.detach(), before[n])]
    assert "text_projection" in changed and any(n.startswith("transformer.") for n in changed)

    frozen = build_model(make_cfg("Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml", opts[2:]))
    assert not any(p.requires_grad for p in frozen.text_side.prompt_encoder.clip_text.parameters())


def test_text_encoder_multiplier_and_embeddings(make_cfg):
    cfg = make_cfg(RETINANET, ["SOLVER.WEIGHT_DECAY", "0.05"])
    model = ToyCLIPDetector()
    groups = lr_and_wd(build_optimizer(cfg, model))
    base = cfg.SOLVER.BASE_LR
    # Multiplier 0: the frozen text tower is left out of the optimizer entirely; not its prompt.
    assert all(p not in groups for p in model.text_tower.parameters())
    assert groups[model.context] == {"lr": pytest.approx(base), "weight_decay": 0.0}
    assert groups[model.backbone[0].weight]["lr"] == pytest.approx(0.1 * base)
    assert groups[model.fpn_lateral.weight]["lr"] == pytest.approx(base)
    assert groups[model.head.weight] == {"lr": pytest.approx(base), "weight_decay": pytest.approx(0.05)}
    assert groups[model.head.bias]["weight_decay"] == pytest.approx(0.05)  # WEIGHT_DECAY_BIAS unset
    assert groups[model.context_decoder.weight]["weight_decay"] == pytest.approx(0.05)
    for no_decay in (model.context, model.gamma, model.norm.weight, model.backbone[1].weight):
        assert groups[no_decay]["weight_decay"] == 0.0
    # A trainable text tower with multiplier 0 is a contradiction, not a silent freeze.
    with pytest.raises(ValueError, match=r"clip_text\.\w+.*\(text_tower\).*multiplier is 0"):
        build_optimizer(cfg, ToyCLIPDetector(freeze_text_tower=False))

    cfg = make_cfg(RETINANET, ["SOLVER.TEXT_ENCODER_MULTIPLIER", "0.5", "SOLVER.OPTIMIZER", "SGD"])
    model = ToyCLIPDetector(freeze_text_tower=False)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = lr_and_wd(optimizer)
    assert groups[model.text_tower.proj.weight]["lr"] == pytest.approx(0.5 * cfg.SOLVER.BASE_LR)
    assert groups[model.text_tower.positional_embedding]["weight_decay"] == 0.0


def test_full_model_gradient_clipping_bounds_total_norm(make_cfg):
    max_norm = 1e-3
    # The base configs: Detectron2's key, CLIP_TYPE "full_model" at 0.1 (the reference recipe).
    recipe = make_cfg(RETINANET).SOLVER.CLIP_GRADIENTS
    assert (recipe.ENABLED, recipe.CLIP_TYPE, recipe.CLIP_VALUE) == (True, "full_model", 0.1)
    cfg = make_cfg(RETINANET, ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", str(max_norm)])
    model = ToyCLIPDetector()
    optimizer = build_optimizer(cfg, model)
    x = torch.randn(2, 3, 8, 8)
    features = model.context_decoder(model.fpn_lateral(model.backbone(x)).mean((2, 3)))
    features = features * model.gamma
    loss = 1e3 * (model.head(model.norm(features)).sum() + model.context.sum())
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    before = [p.grad.clone() for p in params]
    total_before = torch.norm(torch.stack([g.norm() for g in before]))
    assert total_before > 100 * max_norm
    optimizer.step()
    total_after = torch.norm(torch.stack([p.grad.norm() for p in params]))
    # One norm for all parameters together (per-parameter clipping would allow sqrt(N) x max_norm),
    # and the direction of the update is unchanged.
    assert total_after <= max_norm * (1 + 1e-4)
    assert total_after == pytest.approx(max_norm, rel=1e-3)
    scale = total_after / total_before
    for g0, p in zip(before, params):
        torch.testing.assert_close(p.grad, g0 * scale)

    # Detectron2's per-parameter clipping ("value", "norm") is still Detectron2's; disabled is none.
    cfg = make_cfg(RETINANET, ["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"])
    optimizer = build_optimizer(cfg, ToyCLIPDetector())
    assert "WithGradientClip" in type(optimizer).__name__ and "FullModel" not in type(optimizer).__name__
    cfg = make_cfg(RETINANET, ["SOLVER.CLIP_GRADIENTS.ENABLED", "False"])
    assert type(build_optimizer(cfg, ToyCLIPDetector())) is torch.optim.AdamW


def test_removed_full_model_clip_key_names_its_replacement(tmp_path):
    """Configs written for SOLVER.FULL_MODEL_CLIP_GRAD_NORM get an error that names the new keys."""
    old = tmp_path / "old.yaml"
    old.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nSOLVER:\n  FULL_MODEL_CLIP_GRAD_NORM: 0.1\n')
    hint = r"SOLVER\.FULL_MODEL_CLIP_GRAD_NORM.*SOLVER\.CLIP_GRADIENTS\.ENABLED True.*CLIP_TYPE \"full_model\".*CLIP_VALUE"
    with pytest.raises(ConfigError, match=rf"old\.yaml.*{hint}"):
        build_config(str(old))
    with pytest.raises(ConfigError, match=rf"override.*{hint}"):
        build_config(str(REPO_ROOT / "configs" / RETINANET), ["SOLVER.FULL_MODEL_CLIP_GRAD_NORM", "0.1"])


def test_step_fractions_set_scheduler_milestones(make_cfg):
    cfg = make_cfg(RETINANET, ["SOLVER.MAX_ITER", "1200", "SOLVER.WARMUP_ITERS", "0"])
    # build_config writes the base config's fractions into SOLVER.STEPS: one schedule in the config.
    assert cfg.SOLVER.STEPS == (800, 1100) and list(cfg.SOLVER.STEP_FRACTIONS) == []
    assert resolve_step_fractions(cfg).SOLVER.STEPS == (800, 1100)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    drops = [i for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1] * 0.5]
    assert drops == [800, 1100]
    assert lrs[-1] == pytest.approx(cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA ** 2)
    # Short runs: steps that collapse onto MAX_ITER are dropped instead of crashing the scheduler.
    short = make_cfg(RETINANET, ["SOLVER.MAX_ITER", "4"])
    assert resolve_step_fractions(short).SOLVER.STEPS == (3,)
    build_lr_scheduler(short, build_optimizer(short, nn.Linear(2, 2)))
    # No fractions: SOLVER.STEPS as given.
    plain = make_cfg(RETINANET, ["SOLVER.STEP_FRACTIONS", "[]", "SOLVER.STEPS", "(5, 7)"])
    assert resolve_step_fractions(plain).SOLVER.STEPS == (5, 7)
    # Fractions given on a config that has none (Detectron2's stock config): they win over its STEPS.
    stock = make_cfg("COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml", ["SOLVER.STEP_FRACTIONS", "[0.5]", "SOLVER.MAX_ITER", "10"])
    assert stock.SOLVER.STEPS == (5,)


def test_explicit_steps_win_over_step_fractions(make_cfg, tmp_path):
    """SOLVER.STEPS given by the user replace the base config's SOLVER.STEP_FRACTIONS (they were
    silently replaced by them); both in one place is an error naming both keys."""
    cfg = make_cfg(RETINANET, ["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "(50, 90)"])
    assert cfg.SOLVER.STEPS == (50, 90) and list(cfg.SOLVER.STEP_FRACTIONS) == []
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [i for i in range(1, 100) if lrs[i] < lrs[i - 1] * 0.5] == [50, 90]
    leaf = tmp_path / "steps.yaml"
    leaf.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nSOLVER:\n  MAX_ITER: 100\n  STEPS: (60,)\n')
    cfg = build_config(str(leaf), ["MODEL.DEVICE", "cpu"])
    assert cfg.SOLVER.STEPS == (60,) and list(cfg.SOLVER.STEP_FRACTIONS) == []
    # The later place wins: fractions given as overrides over a file's STEPS.
    cfg = build_config(str(leaf), ["MODEL.DEVICE", "cpu", "SOLVER.STEP_FRACTIONS", "[0.5]"])
    assert cfg.SOLVER.STEPS == (50,)
    both = ["SOLVER.STEPS", "(5, 7)", "SOLVER.STEP_FRACTIONS", "[0.5]"]
    with pytest.raises(ConfigError, match=r"SOLVER\.STEPS \(5, 7\) and SOLVER\.STEP_FRACTIONS \[0\.5\] are both set"):
        make_cfg(RETINANET, both)
    both_in_file = tmp_path / "both.yaml"
    both_in_file.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nSOLVER:\n  STEPS: (5, 7)\n  STEP_FRACTIONS: [0.5]\n')
    with pytest.raises(ConfigError, match=r"SOLVER\.STEPS.*SOLVER\.STEP_FRACTIONS.*both set in the config file"):
        build_config(str(both_in_file))
    # A dumped config (what OUTPUT_DIR/config.yaml holds) builds the same schedule again.
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(make_cfg(RETINANET, ["SOLVER.MAX_ITER", "1200"]).dump())
    assert build_config(str(dumped), ["MODEL.DEVICE", "cpu"]).SOLVER.STEPS == (800, 1100)


def test_keys_the_clip_models_ignore_are_rejected(make_cfg):
    with pytest.raises(ConfigError, match=r"MODEL\.BACKBONE\.FREEZE_AT \(0\).*use MODEL\.CLIP\.FREEZE_AT"):
        make_cfg(RETINANET, ["MODEL.BACKBONE.FREEZE_AT", "0"])
    with pytest.raises(ConfigError, match=r"MODEL\.BACKBONE\.FREEZE_AT \(2\).*use MODEL\.CLIP\.FREEZE_AT"):
        make_cfg("Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml", ["MODEL.BACKBONE.FREEZE_AT", "2"])
    assert make_cfg(RETINANET, ["MODEL.CLIP.FREEZE_AT", "2"]).MODEL.CLIP.FREEZE_AT == 2
    # Detectron2's own ResNet reads it.
    assert make_cfg("COCO/mask_rcnn_R50_FPN_1x_detectron2.yaml", ["MODEL.BACKBONE.FREEZE_AT", "3"]).MODEL.BACKBONE.FREEZE_AT == 3
    with pytest.raises(ConfigError, match=r"TEST\.AUG\.ENABLED True: test-time augmentation is not supported"):
        make_cfg(MASK_RCNN, ["TEST.AUG.ENABLED", "True"])


# ------------------------------------------------------------------------------- checkpoints
def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    model = ToyCLIPDetector()
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path), save_to_disk=True)
    checkpointer.save("model_0000009", iteration=9)
    good = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    real_save = torch.save

    def crashing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial checkpoint bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        checkpointer.save("model_0000019", iteration=19)
    with pytest.raises(OSError, match="simulated"):  # overwriting an existing file fails cleanly too
        checkpointer.save("model_0000009", iteration=9)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporaries
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    assert_exactly_equal(torch.load(tmp_path / "model_0000009.pth", weights_only=True), good)

    # A writer killed with SIGKILL leaves a hidden temporary; the next checkpointer's save removes it.
    (tmp_path / ".model_0000029.pth.abc123.tmp").write_bytes(b"half")
    AtomicDetectionCheckpointer(ToyCLIPDetector(), str(tmp_path), save_to_disk=True).save("model_0000039")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth", "model_0000039.pth"]


_SAVE_FOREVER = """
import sys, torch
from denseclip.engine import AtomicDetectionCheckpointer
model = torch.nn.Linear(1024, 2048)  # 8 MB per checkpoint
checkpointer = AtomicDetectionCheckpointer(model, sys.argv[1], save_to_disk=True)
for i in range(10**6):
    with torch.no_grad():
        model.weight.fill_(i)
    checkpointer.save(f"model_{i % 3}", iteration=i)
"""


def test_kill_9_while_saving_leaves_a_loadable_last_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(tmp_path)], stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if (tmp_path / "model_2.pth").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    finally:
        proc.kill()  # SIGKILL, mid-save with high probability
        proc.wait()
    last = (tmp_path / "last_checkpoint").read_text()
    state = torch.load(tmp_path / last, weights_only=True)
    assert torch.all(state["model"]["weight"] == state["iteration"])
    for f in tmp_path.glob("model_*.pth"):  # every visible checkpoint is complete
        torch.load(f, weights_only=True)


def test_missing_weights_file_is_named(make_cfg, tmp_path):
    cfg = make_cfg(RETINANET, TINY_OPTS)
    missing = str(tmp_path / "nope" / "model_final.pth")
    checkpointer = Trainer.build_checkpointer(cfg, ToyCLIPDetector())
    with pytest.raises(FileNotFoundError, match="nope/model_final.pth"):
        checkpointer.resume_or_load(missing, resume=False)
    assert checkpointer.load("") == {}  # empty MODEL.WEIGHTS: train from scratch, as in Detectron2


def test_shape_mismatch_error_or_reinit(make_cfg, tmp_path):
    source = build_model(make_cfg(RETINANET, TINY_OPTS))
    path = tmp_path / "two_classes.pth"
    torch.save({"model": source.state_dict()}, path)

    cfg = make_cfg(RETINANET, [*TINY_OPTS, "MODEL.RETINANET.NUM_CLASSES", "3"])
    target = build_model(cfg)
    with pytest.raises(IncompatibleCheckpointError) as err:
        Trainer.build_checkpointer(cfg, target).load(str(path))
    message = str(err.value)
    assert "head.cls_score.weight: checkpoint (18, 256, 3, 3) vs model (27, 256, 3, 3)" in message
    assert "head.cls_score.bias: checkpoint (18,) vs model (27,)" in message
    assert "MODEL.REINIT_VOCABULARY_MISMATCH" in message

    cfg.MODEL.REINIT_VOCABULARY_MISMATCH = True
    target = build_model(cfg)
    fresh = target.head.cls_score.weight.detach().clone()
    Trainer.build_checkpointer(cfg, target).load(str(path))
    assert torch.equal(target.head.cls_score.weight, fresh)
    loaded, saved = target.state_dict(), source.state_dict()
    for key, value in saved.items():
        if not key.startswith("head.cls_score."):
            assert torch.equal(loaded[key], value), key

# ------------------------------------------------------------------------------- setup / config
def test_config_errors_name_the_key_and_file(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nSOLVER:\n  MAX_ITERS: 10\n')
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nSOLVER:\n  MAX_ITER: "ten"\n')
    parser = default_argument_parser()
    with pytest.raises(ConfigError, match=r"bad_key\.yaml.*Non-existent config key: SOLVER\.MAX_ITERS"):
        setup(parser.parse_args(["--config-file", str(bad_key)]))
    with pytest.raises(ConfigError, match=r"bad_type\.yaml.*SOLVER\.MAX_ITER"):
        setup(parser.parse_args(["--config-file", str(bad_type)]))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        setup(parser.parse_args(["--config-file", str(tmp_path / "missing.yaml")]))

    from detectron2.config import get_cfg

    from denseclip import add_denseclip_config

    cfg = get_cfg()
    add_denseclip_config(cfg)
    merge_config_file(cfg, str(REPO_ROOT / "configs" / RETINANET))
    with pytest.raises(ConfigError, match=r"override.*Non-existent key: MODEL\.NOT_A_KEY"):
        merge_overrides(cfg, ["MODEL.NOT_A_KEY", "1"])
    args = parser.parse_args(["--dataset", "a=x.json:img", "--dataset", "b=y.json:img", "SOLVER.MAX_ITER", "3"])
    assert args.dataset == ["a=x.json:img", "b=y.json:img"] and args.opts == ["SOLVER.MAX_ITER", "3"]


def test_unregistered_dataset_names_are_reported_before_training(tiny_data, tmp_path):
    """A typo in DATASETS.TEST surfaced after the whole schedule; in DATASETS.TRAIN of a DenseCLIP
    model, as "Cannot determine the class names". Both are reported by setup, with similar names."""
    parser = default_argument_parser()
    base = ["--config-file", str(REPO_ROOT / "configs" / RETINANET), "MODEL.CLIP.PRETRAINED", "", *TINY_OPTS,
            "OUTPUT_DIR", str(tmp_path)]
    with pytest.raises(ConfigError, match=r"DATASETS\.TEST: dataset 'engine_tiny_vla' is not registered "
                                          r"\(registered names like it: 'engine_tiny_val'"):
        setup(parser.parse_args([*base, "DATASETS.TRAIN", "('engine_tiny_train',)", "DATASETS.TEST", "('engine_tiny_vla',)"]))
    synthetic = ["--config-file", str(REPO_ROOT / "configs" / "Synthetic" / "mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"),
                 "OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", "('synthetic_shape_train',)"]
    with pytest.raises(ConfigError, match=r"DATASETS\.TRAIN: dataset 'synthetic_shape_train' is not registered "
                                          r"\(registered names like it: 'synthetic_shapes_train'.*--dataset NAME=JSON:IMAGE_ROOT"):
        setup(parser.parse_args(synthetic))
    with pytest.raises(ConfigError, match=r"'xyzzy' is not registered \(no registered name is close to it; \d+ are registered"):
        setup(parser.parse_args([*base, "DATASETS.TRAIN", "('xyzzy',)"]))
    assert not (tmp_path / "log.txt").exists()  # before anything else


# ------------------------------------------------------------------------------- trainer pieces
class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, data: Any) -> Dict[str, torch.Tensor]:
        return {"loss_cls": self.w.sum() * float("nan"), "loss_box_reg": self.w.sum()}


def test_nonfinite_loss_raises_with_iteration_and_names(make_cfg):
    cfg = make_cfg(RETINANET, TINY_OPTS)
    model = NaNModel()
    step_trainer = Trainer.build_step_trainer(cfg, model, itertools.repeat([{}]), build_optimizer(cfg, model))
    with pytest.raises(FloatingPointError, match=r"(?s)iteration=0.*loss_cls"):
        step_trainer.train(0, 3)


def test_bfloat16_amp_trains_mask_rcnn_on_cpu(make_cfg, tiny_data, tmp_path):
    """SOLVER.AMP.PRECISION bfloat16: autocast on CPU too (no gradient scaler), finite losses."""
    # One iteration: bfloat16 matmuls are emulated on CPUs without native support (~15 s each here).
    cfg = make_cfg(MASK_RCNN, [*TINY_OPTS, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16",
                               "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
                               "DATASETS.TRAIN", "('engine_tiny_train',)", "DATASETS.TEST", "()",
                               "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is AutocastTrainer and trainer._trainer.grad_scaler is None
    assert trainer._trainer.dtype == torch.bfloat16 and trainer._trainer.device_type == "cpu"
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = training_metrics(tmp_path)
    assert [m["iteration"] for m in losses] == [0]
    assert all(np.isfinite(m[k]) for m in losses for k in ("loss_mask", "total_loss"))


def test_amp_on_cpu_falls_back_and_trains_mask_rcnn(make_cfg, tiny_data, tmp_path, caplog):
    cfg = make_cfg(MASK_RCNN, [*TINY_OPTS, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2",
                               "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TRAIN", "('engine_tiny_train',)",
                               "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg)
    assert type(trainer._trainer) is SimpleTrainer
    assert "SOLVER.AMP.ENABLED is ignored" in caplog.text
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = training_metrics(tmp_path)
    assert [m["iteration"] for m in losses] == [0, 1]
    assert all(np.isfinite(m["loss_mask"]) for m in losses)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


class FakeGradScaler:
    def __init__(self, scales: Sequence[float]) -> None:
        self._scales = iter(scales)

    def get_scale(self) -> float:
        return next(self._scales)


def test_grad_scaler_overflow_is_logged(caplog):
    hook = GradScalerOverflowLogger(FakeGradScaler([65536.0, 65536.0, 32768.0, 32768.0]))
    hook.trainer = type("FakeTrainer", (), {"iter": 0})()
    with EventStorage() as storage, caplog.at_level("WARNING"):
        hook.trainer.storage = storage
        hook.before_train()
        for it in range(3):
            hook.trainer.iter = it
            storage.iter = it
            hook.after_step()
    assert hook.skipped == 1
    assert "inf/NaN gradients at iteration 1" in caplog.text and "65536 -> 32768" in caplog.text
    assert storage.history("amp/skipped_steps").latest() == 1


def test_coco_evaluator_uses_the_installed_detectron2(make_cfg, tiny_data, tmp_path):
    """Whichever Detectron2 is installed (v0.6 without C++ ops, or an upstream build with them),
    the evaluator asks for the fast COCOeval exactly when it exists."""
    cfg = make_cfg(MASK_RCNN, TINY_OPTS)
    evaluator = build_coco_evaluator(cfg, "engine_tiny_val", str(tmp_path))
    assert evaluator._tasks == ("bbox", "segm")
    assert evaluator._use_fast_impl == fast_coco_eval_available()
    try:
        from detectron2 import _C
    except ImportError:
        _C = None
    assert fast_coco_eval_available() == hasattr(_C, "COCOevalAccumulate")


def test_readme_names_where_predictions_are_written(make_cfg, tiny_data, tmp_path):
    """The README said OUTPUT_DIR/inference/coco_instances_results.json; it is one folder per dataset."""
    cfg = make_cfg(MASK_RCNN, [*TINY_OPTS, "OUTPUT_DIR", str(tmp_path)])
    evaluator = build_coco_evaluator(cfg, "engine_tiny_val")
    assert evaluator._output_dir == str(tmp_path / "inference" / "engine_tiny_val")
    readme = (REPO_ROOT / "README.md").read_text()
    assert "`OUTPUT_DIR/inference/<dataset>/coco_instances_results.json`" in readme
    assert "`OUTPUT_DIR/inference/coco_instances_results.json`" not in readme


def test_coco_evaluator_without_cpp_extension(make_cfg, tiny_data, tmp_path):
    if fast_coco_eval_available():
        pytest.skip("this Detectron2 has its C++ ops (COCOeval_opt); the fallback is for the C++-less build")
    evaluator = build_coco_evaluator(make_cfg(MASK_RCNN, TINY_OPTS), "engine_tiny_val", str(tmp_path))
    assert evaluator._use_fast_impl is False


# ------------------------------------------------------------------------------- train_net.py
@pytest.fixture(scope="module")
def first_run(tiny_data, tmp_path_factory) -> Path:
    """4 seeded iterations, checkpoints every 2, evaluation on the tiny set at the end."""
    out = tmp_path_factory.mktemp("first_run")
    run_train_net(train_args(tiny_data, out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                             "SEED", "42", "DATASETS.TEST", "('engine_tiny_val',)"))
    return out


def test_train_net_end_to_end(first_run):
    metrics = training_metrics(first_run)
    assert [m["iteration"] for m in metrics] == [0, 1, 2, 3]
    assert all(np.isfinite(m["total_loss"]) and m["total_loss"] > 0 for m in metrics)
    assert (first_run / "model_final.pth").is_file()
    assert {"model_0000001.pth", "model_0000003.pth"} <= set(os.listdir(first_run))
    assert (first_run / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(first_run.glob(".*.tmp"))
    predictions = json.loads((first_run / "inference" / "engine_tiny_val" / "coco_instances_results.json").read_text())
    assert predictions and {"image_id", "category_id", "bbox", "score"} <= set(predictions[0])
    assert any("bbox/AP" in m for m in read_metrics(first_run))


def test_dataset_registration_reaches_log_txt(first_run, tiny_data):
    """build_config registers the --dataset specs before logging is set up: its messages are held
    back and written to log.txt (they were lost)."""
    log = (first_run / "log.txt").read_text()
    assert f"Registered dataset 'engine_tiny_train': {tiny_data['json']}" in log
    assert "Registered dataset 'engine_tiny_val'" in log
    assert "CUDA is not available: MODEL.DEVICE cuda -> cpu" in log
    assert "SOLVER.STEPS (3,) = SOLVER.STEP_FRACTIONS" in log


def test_logged_lr_is_the_base_lr(first_run, make_cfg):
    """``lr`` in metrics.json is SOLVER.BASE_LR times the schedule (Detectron2 logged the image
    encoder's group, x0.1); the other roles are logged under their own names."""
    base_lr = make_cfg(RETINANET).SOLVER.BASE_LR
    metrics = {m["iteration"]: m for m in training_metrics(first_run)}
    # Warm-up over iterations 0-1 (factor 0.001 -> 1), then BASE_LR until the step at iteration 3.
    assert metrics[0]["lr"] == pytest.approx(base_lr * 0.001)
    assert metrics[2]["lr"] == pytest.approx(base_lr)
    assert metrics[3]["lr"] == pytest.approx(base_lr * 0.1)
    for m in metrics.values():
        assert m["lr/image_encoder"] == pytest.approx(0.1 * m["lr"])  # SOLVER.BACKBONE_MULTIPLIER
    # The scheduler's state stays under Detectron2's hook name in checkpoints (--resume).
    trainer_state = torch.load(first_run / "model_0000001.pth", weights_only=True)["trainer"]
    assert "LRScheduler" in trainer_state["hooks"]


def test_own_checkpoints_load_with_weights_only(first_run, monkeypatch, make_cfg):
    checkpoint = torch.load(first_run / "model_0000001.pth", weights_only=True)
    assert checkpoint["iteration"] == 1
    trainer_state = checkpoint["trainer"]
    assert trainer_state["iteration"] == 1 and "LRScheduler" in trainer_state["hooks"]
    assert trainer_state["_trainer"]["optimizer"]["state"]  # AdamW moments are saved
    calls: List[Dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = build_model(make_cfg(RETINANET, TINY_OPTS))
    Trainer.build_checkpointer(make_cfg(RETINANET, TINY_OPTS), model).load(str(first_run / "model_final.pth"))
    assert calls and all(c.get("weights_only") is True for c in calls)
    final = real_load(first_run / "model_final.pth", weights_only=True)["model"]
    assert torch.equal(model.head.cls_score.weight, final["head.cls_score.weight"])


def test_seeded_runs_repeat_their_losses(first_run, tiny_data, tmp_path):
    run_train_net(train_args(tiny_data, tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100",
                             "SEED", "42", "DATASETS.TEST", "()"))
    keys = ("total_loss", "loss_cls", "loss_box_reg", "num_pos_anchors")
    first = [[m[k] for k in keys] for m in training_metrics(first_run)]
    second = [[m[k] for k in keys] for m in training_metrics(tmp_path)]
    assert len(first) == len(second) == 4
    assert first == second


def test_resume_continues_from_last_checkpoint(first_run, tiny_data, tmp_path, make_cfg):
    # An interrupted run: its last complete checkpoint is the one of iteration 1.
    shutil.copy(first_run / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)

    cfg = make_cfg(RETINANET, [*TINY_OPTS, "SOLVER.MAX_ITER", "4", "DATASETS.TRAIN", "('engine_tiny_train',)",
                               "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    assert_exactly_equal(trainer.optimizer.state_dict(), saved["trainer"]["_trainer"]["optimizer"], "optimizer")
    assert trainer.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    del trainer

    proc = run_train_net(["--resume", *train_args(tiny_data, tmp_path, "SOLVER.MAX_ITER", "4",
                                                  "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()")])
    log = proc.stdout + proc.stderr
    assert "model_0000001.pth" in log and "Starting training from iteration 2" in log
    assert [m["iteration"] for m in training_metrics(tmp_path)] == [2, 3]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 3


def test_eval_only_loads_weights(first_run, tiny_data, tmp_path):
    """--eval-only writes into OUTPUT_DIR/eval/<weights>: the training run's config.yaml, log and
    inference results stay as they were (it used to overwrite and append to them)."""
    training_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / "config.yaml").write_text("the training run's\n")
    proc = run_train_net(["--eval-only", *train_args(
        tiny_data, tmp_path, "MODEL.WEIGHTS", str(first_run / "model_final.pth"), "DATASETS.TEST", "('engine_tiny_val',)")])
    output = proc.stdout + proc.stderr
    assert "MODEL.DEVICE cuda -> cpu" in output  # Detectron2's default device, without a GPU
    assert f"Loading from {first_run / 'model_final.pth'}" in output
    evaluation = tmp_path / "eval" / "model_final"
    assert f"--eval-only writes to {evaluation}" in output
    assert (evaluation / "inference" / "engine_tiny_val" / "coco_instances_results.json").is_file()
    assert (evaluation / "config.yaml").is_file() and "\x1b[" not in (evaluation / "log.txt").read_text()
    assert (tmp_path / "config.yaml").read_text() == "the training run's\n" and not (tmp_path / "inference").exists()
    assert all(p.read_bytes() == content for p, content in training_files.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_num_gpus_without_cuda_stops_unless_cpu_processes_are_asked_for(tiny_data, tmp_path):
    """--num-gpus 8 without a GPU used to start 8 CPU processes silently."""
    def main() -> None:
        raise AssertionError("must not run")

    with pytest.raises(LaunchError, match=r"--num-gpus 8: no CUDA GPU is available.*--cpu-processes"):
        launch(main, 8)
    parser = default_argument_parser()
    config = ["--config-file", str(REPO_ROOT / "configs" / RETINANET)]
    assert not cpu_processes_requested(parser.parse_args([*config, "--num-gpus", "2"]))
    assert cpu_processes_requested(parser.parse_args([*config, "--num-gpus", "2", "--cpu-processes"]))
    assert cpu_processes_requested(parser.parse_args([*config, "--num-gpus", "2", "MODEL.DEVICE", "cpu"]))
    cpu_config = tmp_path / "cpu.yaml"
    cpu_config.write_text(f'_BASE_: "{REPO_ROOT / "configs" / RETINANET}"\nMODEL:\n  DEVICE: "cpu"\n')
    assert cpu_processes_requested(parser.parse_args(["--config-file", str(cpu_config), "--num-gpus", "2"]))

    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--num-gpus", "8",
         *train_args(tiny_data, tmp_path, "SOLVER.MAX_ITER", "1")],
        capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT), env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode != 0
    assert "train_net.py: error: --num-gpus 8: no CUDA GPU is available" in proc.stderr
    assert not (tmp_path / "log.txt").exists()  # stopped before any process started


def test_two_cpu_processes_with_gloo(tiny_data, tmp_path):
    run_train_net(["--num-gpus", "2", "--cpu-processes", *train_args(tiny_data, tmp_path, "SOLVER.MAX_ITER", "2",
                                                  "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()")])
    for log_file, rank in (("log.txt", 0), ("log.txt.rank1", 1)):
        log = (tmp_path / log_file).read_text()
        assert f"Rank of current process: {rank}. World size: 2" in log
        assert "Total training time" in log, f"rank {rank} did not finish"
    assert "SyncBatchNorm layers -> CPUSyncBatchNorm (gloo)" in (tmp_path / "log.txt").read_text()  # the configs' SyncBN
    assert [m["iteration"] for m in training_metrics(tmp_path)] == [0, 1]
    assert (tmp_path / "model_final.pth").is_file()
