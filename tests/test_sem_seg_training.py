"""Semantic segmentation through the Trainer: the semseg mapper, a few iterations, SemSegEvaluator's
mIoU, the vocabulary recorded in the checkpoint; and the demo drawing a segmentation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from detectron2.evaluation import SemSegEvaluator

from denseclip.data import SYNTHETIC_SEM_SEG_CLASSES, SemSegDatasetMapper, register_synthetic_dataset, register_synthetic_from_config
from denseclip.engine import Trainer

CONFIG = "Synthetic/semantic_fpn_denseclip_RN-tiny_shapes.yaml"


@pytest.fixture
def restore_synthetic_registration():
    yield
    register_synthetic_dataset()


def tiny_opts(root, out) -> list:
    return [
        "DATASETS.SYNTHETIC.ROOT", str(root), "DATASETS.SYNTHETIC.NUM_TRAIN", "4", "DATASETS.SYNTHETIC.NUM_VAL", "2",
        "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "256",
        "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256",
        "TEST.SEM_SEG.CROP_SIZE", "(64, 64)", "TEST.SEM_SEG.STRIDE", "(43, 43)", "MODEL.CLIP.POS_EMBED_GRID", "2",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.LOG_PERIOD", "1", "OUTPUT_DIR", str(out),
    ]


def test_trainer_trains_and_evaluates_mIoU(make_cfg, tmp_path, restore_synthetic_registration):
    cfg = make_cfg(CONFIG, tiny_opts(tmp_path / "shapes", tmp_path / "out"))
    register_synthetic_from_config(cfg)
    assert isinstance(Trainer._mapper(cfg, True), SemSegDatasetMapper)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert [tuple(x["sem_seg"].shape) for x in batch] == [(64, 64)] * 2

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert len(losses) == 3 and {"loss_sem_seg", "loss_pixel_text"} <= set(losses[-1])
    assert np.isfinite(losses[-1]["total_loss"])

    # Training ends with DATASETS.TEST evaluated by SemSegEvaluator (the dataset's evaluator_type).
    assert isinstance(Trainer.build_evaluator(cfg, "synthetic_shapes_sem_seg_val"), SemSegEvaluator)
    [evaluation] = [r for r in records if "sem_seg/mIoU" in r]
    assert 0.0 <= evaluation["sem_seg/mIoU"] <= 100.0 and f"sem_seg/IoU-{SYNTHETIC_SEM_SEG_CLASSES[1]}" in evaluation
    # The checkpoint records the vocabulary, as for the detectors.
    saved = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)
    assert saved["vocabulary"] == SYNTHETIC_SEM_SEG_CLASSES


def test_demo_draws_a_segmentation(tmp_path, restore_synthetic_registration):
    """demo.py on a semantic segmentation config writes the drawing (Visualizer.draw_sem_seg) and
    per-class score maps."""
    from denseclip.data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(tmp_path / "shapes", num_train=1, num_val=1, image_size=64)
    image = f"{paths['val_image_root']}/000000.jpg"
    opts = ["MODEL.CLIP.POS_EMBED_GRID", "2", "INPUT.MIN_SIZE_TEST", "64", "TEST.SEM_SEG.CROP_SIZE", "(64, 64)",
            "MODEL.DEVICE", "cpu"]
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), "--config-file", str(REPO_ROOT / "configs" / CONFIG), "--cpu",
         "--score-maps", "--max-score-maps", "2", "--input", image, "--output", str(tmp_path / "vis"), "--opts", *opts],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    written = sorted(p.name for p in (tmp_path / "vis").iterdir())
    assert "000000.jpg" in written and sum("score" in name for name in written) >= 1, written


def test_segmentations_are_drawn_on_images_and_video_frames():
    """draw_predictions / VideoDrawer draw the per-pixel argmax of "sem_seg" with the stuff classes."""
    from detectron2.data.catalog import Metadata

    from denseclip.visualization import VideoDrawer, draw_predictions

    frame = np.full((32, 48, 3), 127, np.uint8)
    scores = torch.zeros(3, 32, 48)
    scores[1, :, :24] = 1.0  # left half class 1, right half class 0
    metadata = Metadata(name="test_sem_seg_drawing", stuff_classes=["a", "b", "c"], stuff_colors=[(0, 0, 255), (255, 0, 0), (0, 255, 0)])
    for drawn in (draw_predictions(frame, {"sem_seg": scores}, metadata), VideoDrawer(metadata)(frame, {"sem_seg": scores})):
        assert drawn.shape == frame.shape
        # BGR: class 1 (red) tints the left half, class 0 (blue) the right.
        assert drawn[16, 4, 2] > drawn[16, 4, 0] and drawn[16, 44, 0] > drawn[16, 44, 2]
