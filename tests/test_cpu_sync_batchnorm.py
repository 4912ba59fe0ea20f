"""Synchronised BatchNorm in CPU processes (gloo): CPUSyncBatchNorm computes what SyncBatchNorm does
(BatchNorm over the batch of all processes), every SyncBN of a model becomes it on CPU only (same
state-dict keys), and segmentation configs train with two CPU processes that end with identical weights.
"""
import json
import math
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn as nn
from conftest import REPO_ROOT, assert_exactly_equal
from detectron2.layers import get_norm
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from tiny_semseg import BASE_CONFIG, tiny_opts

from denseclip.backbone.norm import CPUSyncBatchNorm, convert_norm, sync_batchnorm_to_cpu
from denseclip.engine import Trainer, default_argument_parser, launch, setup

CHANNELS = 3
# Per process and step: a different batch size and image size (as detection batches), far from zero mean.
SHAPES = {0: [(2, CHANNELS, 5, 7), (1, CHANNELS, 6, 4)], 1: [(3, CHANNELS, 4, 6), (2, CHANNELS, 3, 3)]}


def _batch(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(10 * rank + step)
    return 50.0 + 3.0 * torch.randn(SHAPES[rank][step], generator=g)


def _upstream_gradient(x: torch.Tensor, rank: int, step: int) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + 10 * rank + step))


def _affine(norm: nn.Module) -> None:
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))


def _two_synchronised_steps(out_dir: Path) -> None:
    """Per process: two training steps of one CPUSyncBatchNorm, the results saved for the test."""
    rank = comm.get_rank()
    norm = CPUSyncBatchNorm(CHANNELS)
    _affine(norm)
    results = {}
    for step in range(2):
        x = _batch(rank, step).requires_grad_(True)
        y = norm(x)
        (y * _upstream_gradient(x, rank, step)).sum().backward()
        results[step] = {"y": y.detach(), "x_grad": x.grad}
    results["state"] = norm.state_dict()
    results["param_grads"] = {"weight": norm.weight.grad, "bias": norm.bias.grad}
    torch.save(results, out_dir / f"rank{rank}.pth")


def test_cpu_sync_batchnorm_is_batchnorm_of_all_processes(two_cpu_processes):
    """Two gloo processes with batches of different sizes: outputs, input gradients, summed parameter
    gradients and running statistics (unbiased variance, batches tracked) are those of one
    BatchNorm2d over all their pixels together, which is what torch.nn.SyncBatchNorm computes."""
    ranks = [torch.load(two_cpu_processes / "batchnorm" / f"rank{r}.pth", weights_only=True) for r in (0, 1)]

    reference = nn.BatchNorm2d(CHANNELS)
    _affine(reference)
    for step in range(2):
        xs = [_batch(r, step).requires_grad_(True) for r in (0, 1)]
        # All pixels of both processes as one 1 x C x P x 1 batch.
        pixels = torch.cat([x.transpose(0, 1).reshape(CHANNELS, -1) for x in xs], dim=1)[None, :, :, None]
        y = reference(pixels)[0, :, :, 0]
        ys = [part.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
              for part, x in zip(y.split([x[:, 0].numel() for x in xs], dim=1), xs)]
        sum((yr * _upstream_gradient(x, r, step)).sum() for r, (yr, x) in enumerate(zip(ys, xs))).backward()
        for r in (0, 1):
            torch.testing.assert_close(ranks[r][step]["y"], ys[r].detach(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ranks[r][step]["x_grad"], xs[r].grad, rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):
        torch.testing.assert_close(ranks[0]["param_grads"][name] + ranks[1]["param_grads"][name],
                                   getattr(reference, name).grad, rtol=1e-4, atol=1e-4)
    for r in (0, 1):
        state = ranks[r]["state"]
        assert set(state) == set(reference.state_dict()) == set(nn.SyncBatchNorm(CHANNELS).state_dict())
        torch.testing.assert_close(state["running_mean"], reference.running_mean)
        torch.testing.assert_close(state["running_var"], reference.running_var)
        assert int(state["num_batches_tracked"]) == 2
    assert_exactly_equal(ranks[0]["state"], ranks[1]["state"], "running statistics of the two processes")


def test_conversion_keeps_the_tensors_and_only_happens_on_cpu(monkeypatch):
    head = nn.Sequential(nn.Conv2d(3, 4, 3), get_norm("SyncBN", 4), nn.Sequential(nn.ReLU(), nn.SyncBatchNorm(4)))
    head[1].eval()
    before = head.state_dict(keep_vars=True)
    converted = sync_batchnorm_to_cpu(head)
    assert converted is head and type(head[1]) is CPUSyncBatchNorm and type(head[2][1]) is CPUSyncBatchNorm
    assert not head[1].training and head[2][1].training
    after = head.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)  # same parameters, buffers
    assert type(sync_batchnorm_to_cpu(nn.SyncBatchNorm(4))) is CPUSyncBatchNorm
    with pytest.raises(ValueError, match="own process group"):
        sync_batchnorm_to_cpu(nn.SyncBatchNorm(4, process_group=object()))

    # MODEL.CLIP.NORM / ANY_BACKBONE.NORM "SyncBN": torch's SyncBatchNorm on GPUs, ours on CPU only.
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    encoder = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # noqa: E731
    assert type(convert_norm(encoder(), "SyncBN", "cuda")[1]) is nn.SyncBatchNorm
    assert type(convert_norm(encoder(), "SyncBN", "cpu")[1]) is CPUSyncBatchNorm
    assert type(convert_norm(encoder(), "BN", "cpu")[1]) is nn.BatchNorm2d


SHAPES_OPTS = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", "4", "DATASETS.SYNTHETIC.NUM_VAL", "2", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256", "DATASETS.TEST", "()",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.LOG_PERIOD", "1", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
]
# A thin Detectron2 ResNet (R50's depth at 1/16 of its width, as the synthetic IN1k-thin configs).
THIN_RESNET = ["MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
               "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
SEGMENTATION_RUNS = {
    # CLIP RN-tiny encoder (MODEL.CLIP.NORM SyncBN), Semantic FPN head (SEM_SEG_HEAD.NORM SyncBN).
    "denseclip_RN-tiny": ("Synthetic/semantic_fpn_denseclip_RN-tiny_shapes.yaml", ["MODEL.CLIP.POS_EMBED_GRID", "2"]),
    # Detectron2's ResNet (ANY_BACKBONE.NORM SyncBN), the same head.
    "R50-IN1k-thin": ("ADE20K/semantic_fpn_R50-IN1k_512x512_80k.yaml",
                      ["DATASETS.TRAIN", "('synthetic_shapes_sem_seg_train',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9",
                       *THIN_RESNET]),
}


def _train_and_save_weights(argv: List[str]) -> None:
    """One process of a train_net.py run; it saves the weights it ends with as rank{r}.pth."""
    cfg = setup(default_argument_parser().parse_args(argv))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module  # DDP
    norms = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    torch.save({"weights": model.state_dict(), "norms": norms}, Path(cfg.OUTPUT_DIR) / f"rank{comm.get_rank()}.pth")


def _in_two_processes(root: str) -> None:
    """Everything this module runs in two CPU processes, in one launch (each start imports the project)."""
    (Path(root) / "batchnorm").mkdir(exist_ok=True)
    _two_synchronised_steps(Path(root) / "batchnorm")
    for run, (config, extra) in sorted(SEGMENTATION_RUNS.items()):
        _train_and_save_weights([
            "--config-file", str(REPO_ROOT / "configs" / config), "MODEL.CLIP.PRETRAINED", "",
            "DATASETS.SYNTHETIC.ROOT", str(Path(root) / "shapes"), *SHAPES_OPTS, *extra, "OUTPUT_DIR", str(Path(root) / run),
        ])


@pytest.fixture(scope="module")
def two_cpu_processes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_cpu_processes")
    launch(_in_two_processes, 2, dist_url="auto", args=(str(root),), cpu_processes=True)
    return root


@pytest.mark.parametrize("run", sorted(SEGMENTATION_RUNS))
def test_two_cpu_processes_train_segmentation_to_identical_weights(run, two_cpu_processes):
    out = two_cpu_processes / run
    ranks = [torch.load(out / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    assert_exactly_equal(ranks[0]["weights"], ranks[1]["weights"], "weights of rank 0 vs rank 1")
    # Every BatchNorm (CLIP or Detectron2 ResNet encoder, Semantic FPN head) synchronised 3 steps.
    norms = ranks[0]["norms"]
    assert set(norms.values()) == {"CPUSyncBatchNorm"}
    assert any(n.startswith("backbone.") for n in norms) and any(n.startswith("sem_seg_head.") for n in norms)
    assert all(int(ranks[0]["weights"][f"{name}.num_batches_tracked"]) == 3 for name in norms)
    losses = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in losses] == [0, 1, 2] and all(math.isfinite(m["total_loss"]) for m in losses)


DETECTOR_SYNC_BN = ["MODEL.FPN.NORM", "SyncBN", "MODEL.ROI_MASK_HEAD.NORM", "SyncBN", "MODEL.RESNETS.NORM", "SyncBN",
                    "MODEL.ANY_BACKBONE.NORM", "SyncBN"]


@pytest.mark.parametrize("config, opts", [
    (BASE_CONFIG, tiny_opts()),
    ("ADE20K/semantic_fpn_R50-IN1k_512x512_80k.yaml", THIN_RESNET),
    ("Synthetic/mask_rcnn_R50-IN1k-thin_FPN_shapes.yaml", DETECTOR_SYNC_BN),
], ids=["paper-semseg-RN-tiny", "IN1k-semseg-thin", "IN1k-mask-rcnn-thin-all-norms-SyncBN"])
def test_cpu_processes_get_the_gpu_model_with_cpu_sync_batchnorm(config, opts, make_cfg, monkeypatch):
    """The model of a world of 2 CPU processes is the GPU processes' model (same module types and
    state-dict keys) with CPUSyncBatchNorm wherever the GPUs have torch.nn.SyncBatchNorm."""
    single = Trainer.build_model(make_cfg(config, opts))
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    cpu_model = Trainer.build_model(make_cfg(config, opts))
    gpu_cfg = make_cfg(config, opts)
    gpu_cfg.MODEL.DEVICE = "cuda"  # the GPU path's layers, built (not moved) on this machine
    gpu_model = META_ARCH_REGISTRY.get(gpu_cfg.MODEL.META_ARCHITECTURE)(gpu_cfg)

    assert list(cpu_model.state_dict()) == list(gpu_model.state_dict()) == list(single.state_dict())
    gpu_types = {name: type(m) for name, m in gpu_model.named_modules()}
    cpu_types = {name: type(m) for name, m in cpu_model.named_modules()}
    assert list(cpu_types) == list(gpu_types)
    changed = {name for name in gpu_types if cpu_types[name] is not gpu_types[name]}
    assert changed == {name for name, t in gpu_types.items() if t is nn.SyncBatchNorm} != set()
    assert all(cpu_types[name] is CPUSyncBatchNorm for name in changed)
    assert any(name.startswith("sem_seg_head.") or name.startswith("roi_heads.") for name in changed)
