"""Shared fixtures: configs built on CPU with random CLIP weights, and the optional tiny_coco data."""
import os

# Read by OpenMP when torch loads it, so set before the import: waiting threads sleep instead of
# spinning. On a CPU shared with other jobs, spinning threads of a 2-thread pool made a tiny training
# step 20x slower (5.3 s instead of 0.26 s of CPU time, machine load 12); results are the same either way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


def load_config(config_file: str, opts: Sequence = ()):
    """An unfrozen config from configs/ (``build_config``), on CPU, with random CLIP weights."""
    from denseclip.engine import build_config

    opts = ["MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", *opts]
    return build_config(str(CONFIG_DIR / config_file), opts)


@pytest.fixture
def make_cfg() -> Callable:
    return load_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _loggers_propagate():
    """Detectron2's setup_logger (run by in-process trainer and CLI tests) stops the named loggers
    from propagating, and adds handlers writing to that test's sys.stdout/stderr: caplog listens on
    the root logger, so later tests would miss their records, and capsys closes those streams after
    the test, so a later record sent there prints a "--- Logging error ---" traceback into the next
    test's captured stderr. Both are undone before every test."""
    import logging

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)
    for name in ("denseclip", "detectron2", "d2", "fvcore"):
        logging.getLogger(name).propagate = True


@pytest.fixture
def tiny_coco_root() -> Path:
    root = Path(os.environ.get("DENSECLIP_TINY_COCO", REPO_ROOT.parent / "shared" / "data" / "tiny_coco"))
    if not (root / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"tiny_coco not found at {root} (set DENSECLIP_TINY_COCO)")
    return root


def synthetic_batch(num_images: int = 2, size=(128, 160), num_classes: int = 3, seed: int = 0):
    """Detectron2 training inputs: random images with 2 boxes each, box-shaped polygon masks."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        boxes = torch.tensor([[8.0, 10.0, w * 0.5, h * 0.6], [w * 0.4, h * 0.3, w - 6.0, h - 4.0]])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor([i % num_classes, (i + 1) % num_classes])
        instances.gt_masks = PolygonMasks(
            [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
        )
        batch.append({"image": image, "instances": instances, "height": h, "width": w})
    return batch


@pytest.fixture
def make_batch() -> Callable:
    return synthetic_batch


def shapes_batch(root, num_images: int = 2, image_size: int = 128, seed: int = 0):
    """Training inputs from the generated synthetic-shapes dataset (learnable, unlike noise)."""
    import numpy as np
    from detectron2.data import detection_utils
    from detectron2.data.datasets import load_coco_json

    from denseclip.data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(root), num_train=num_images, num_val=1, image_size=image_size, seed=seed)
    batch = []
    for record in load_coco_json(paths["train_json"], paths["train_image_root"]):
        image = detection_utils.read_image(record["file_name"], format="RGB")
        for anno in record["annotations"]:  # the json's category ids are 1..N; classes are 0..N-1
            anno["category_id"] -= 1
        instances = detection_utils.annotations_to_instances(record["annotations"], image.shape[:2])
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        batch.append({"image": tensor, "instances": instances, "height": image.shape[0], "width": image.shape[1]})
    return batch


def assert_exactly_equal(a, b, where: str = "") -> None:
    """Recursive exact equality of (nested dicts/lists of) tensors and plain values, naming the path."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_exactly_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_exactly_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
