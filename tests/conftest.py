"""Shared fixtures: configs built on CPU with random CLIP weights, and the optional tiny_coco data."""
import os
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


def load_config(config_file: str, opts: Sequence = ()):
    """A frozen-free Detectron2 config from configs/, on CPU, with random CLIP weights."""
    from detectron2.config import get_cfg

    from denseclip import add_denseclip_config

    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / config_file))
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture
def make_cfg() -> Callable:
    return load_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_coco_root() -> Path:
    root = Path(os.environ.get("DENSECLIP_TINY_COCO", REPO_ROOT.parent / "shared" / "data" / "tiny_coco"))
    if not (root / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"tiny_coco not found at {root} (set DENSECLIP_TINY_COCO)")
    return root
