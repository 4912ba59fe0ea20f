"""Semantic segmentation data: synthetic label maps, own folders (spec and errors), the mapper, ADE20K."""
import subprocess
import sys
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import REPO_ROOT
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from denseclip import add_denseclip_config
from denseclip.data import (
    ADE20K_CLASSES,
    SYNTHETIC_SEM_SEG_CLASSES,
    SemSegDatasetMapper,
    generate_synthetic_dataset,
    read_class_names,
    register_ade20k,
    register_datasets_from_spec,
    register_sem_seg_folder,
    register_synthetic_dataset,
)
from denseclip.data.sem_seg_mapper import PadToSize, ResizeByRatio

SMALL = dict(num_train=6, num_val=2, image_size=96)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Dict[str, str]:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "shapes", seed=0, **SMALL)


@pytest.fixture
def restore_synthetic_registration():
    yield
    register_synthetic_dataset()


def write_folder(root: Path, num: int = 3, size=(40, 30), num_classes: int = 3, label_size=None, seed: int = 0):
    """images/ (JPEG) + labels/ (L PNG) + classes.txt; returns the three paths."""
    rng = np.random.default_rng(seed)
    (root / "images" / "sub").mkdir(parents=True)
    (root / "labels" / "sub").mkdir(parents=True)
    for i in range(num):
        rel = f"sub/{i:03d}" if i % 2 else f"{i:03d}"
        w, h = size
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{rel}.jpg")
        lw, lh = label_size or size
        labels = rng.integers(0, num_classes, (lh, lw)).astype(np.uint8)
        labels[0, 0] = 255
        Image.fromarray(labels, "L").save(root / "labels" / f"{rel}.png")
    (root / "classes.txt").write_text("".join(f"class {c}\n" for c in range(num_classes)))
    return root / "images", root / "labels", root / "classes.txt"


def sem_seg_cfg(crop: int = 64, max_area: float = 0.75):
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (crop,)
    cfg.INPUT.MAX_SIZE_TRAIN = 4 * crop
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (crop, crop)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.MIN_SIZE_TEST = crop
    cfg.INPUT.MAX_SIZE_TEST = 4 * crop
    return cfg


# ------------------------------------------------------------------------------ synthetic
def test_synthetic_label_maps_match_instance_annotations(synthetic):
    import json

    coco = json.load(open(synthetic["train_json"]))
    for image in coco["images"]:
        labels = np.asarray(Image.open(Path(synthetic["train_sem_seg_root"]) / image["file_name"].replace(".jpg", ".png")))
        assert labels.shape == (image["height"], image["width"]) and labels.dtype == np.uint8
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        near = np.zeros(labels.shape, np.uint8)  # class of the instances, grown by two pixels
        for a in anns:
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], image["height"], image["width"]))
            mask = mask_util.decode(rle).astype(bool)
            # The polygons (contours of the visible part) and the label map agree on the class.
            assert (labels[mask] == a["category_id"]).mean() > 0.9
            near[cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] = a["category_id"]
        # Polygons trace the centres of the outline's pixels (corners simplified), so their
        # rasterisation misses a border of at most two pixels; everywhere else is background.
        assert (labels[near == 0] == 0).all()
        assert set(np.unique(labels)) <= set(range(len(SYNTHETIC_SEM_SEG_CLASSES)))
        assert set(np.unique(labels)) - {0} == {a["category_id"] for a in anns}


def test_synthetic_sem_seg_datasets_registered(synthetic, restore_synthetic_registration):
    register_synthetic_dataset(synthetic["root"], seed=0, **SMALL)
    meta = MetadataCatalog.get("synthetic_shapes_sem_seg_val")
    assert meta.stuff_classes == SYNTHETIC_SEM_SEG_CLASSES and meta.evaluator_type == "sem_seg"
    assert meta.ignore_label == 255
    records = DatasetCatalog.get("synthetic_shapes_sem_seg_val")
    assert len(records) == SMALL["num_val"]
    assert all(Path(r["file_name"]).is_file() and Path(r["sem_seg_file_name"]).is_file() for r in records)


# ------------------------------------------------------------------------------ own folders
def test_register_folder_from_spec(tmp_path):
    images, labels, classes = write_folder(tmp_path)
    [name] = register_datasets_from_spec([f"own_semseg_ok=sem_seg:{images}:{labels}:{classes}"])
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["class 0", "class 1", "class 2"] and meta.evaluator_type == "sem_seg"
    records = DatasetCatalog.get(name)
    assert len(records) == 3 and {Path(r["file_name"]).stem for r in records} == {"000", "001", "002"}
    assert all((r["width"], r["height"]) == (40, 30) for r in records)
    # The same registration again is a no-op; the name for other folders is refused.
    register_sem_seg_folder(name, str(images), str(labels), str(classes))
    with pytest.raises(ValueError, match="already registered"):
        register_sem_seg_folder(name, str(images), str(tmp_path), str(classes))


def test_folder_errors_name_the_problem(tmp_path):
    images, labels, classes = write_folder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="Label folder not found: .*nowhere"):
        register_sem_seg_folder("own_semseg_e1", images, tmp_path / "nowhere", classes)
    with pytest.raises(ValueError, match="Cannot parse semantic segmentation dataset spec"):
        register_datasets_from_spec([f"own_semseg_e2=sem_seg:{images}:{labels}"])
    # Labels outside the classes: values and files named.
    with pytest.raises(ValueError, match=r"Label values \[2\] .* outside the 2 classes .* 3 file\(s\)"):
        register_sem_seg_folder("own_semseg_e3", images, labels, ["a", "b"])
    # Sizes differ.
    images, labels, classes = write_folder(tmp_path / "b", label_size=(40, 31))
    with pytest.raises(ValueError, match=r"differ in size from their image: 000.png is 40x31, its image 40x30"):
        register_sem_seg_folder("own_semseg_e4", images, labels, classes)
    # An image without a label, an RGB label map.
    images, labels, classes = write_folder(tmp_path / "c")
    (labels / "000.png").unlink()
    with pytest.raises(ValueError, match="have no label PNG of the same name.*000.jpg"):
        register_sem_seg_folder("own_semseg_e5", images, labels, classes)
    Image.new("RGB", (40, 30)).save(labels / "000.png")
    with pytest.raises(ValueError, match="single-channel PNGs .* got mode RGB"):
        register_sem_seg_folder("own_semseg_e6", images, labels, classes)
    (tmp_path / "bad.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="line 2: empty class name"):
        read_class_names(tmp_path / "bad.txt")


# ------------------------------------------------------------------------------ mapper
def test_train_mapper_crops_pads_and_keeps_labels(tmp_path):
    images, labels, classes = write_folder(tmp_path, num=2, size=(48, 40), num_classes=3)
    register_sem_seg_folder("own_semseg_mapper", images, labels, classes)
    records = DatasetCatalog.get("own_semseg_mapper")
    cfg = sem_seg_cfg(crop=64)
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    np.random.seed(0)
    padded_rows = 0
    for _ in range(8):
        out = mapper(records[0])
        image, labels = out["image"], out["sem_seg"]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and labels.shape == (64, 64)
        assert set(labels.unique().tolist()) <= {0, 1, 2, 255}
        # The resized 48x40 image is at most 96x80: below the crop size, the rest is padding,
        # labels 255 and pixels at the mean (0 once normalised, as mmseg pads after Normalize).
        rows = (labels == 255).all(dim=1)
        padded_rows += int(rows.sum())
        assert torch.allclose(image[:, rows], mean.expand(3, 64, 64)[:, rows])
    assert padded_rows > 0
    pad = PadToSize((8, 10), (1.0, 2.0, 3.0), 255).get_transform(np.zeros((5, 10, 3), np.uint8))
    padded = pad.apply_segmentation(np.ones((5, 10), np.uint8))
    assert padded.shape == (8, 10) and (padded[5:] == 255).all() and (padded[:5] == 1).all()
    assert (pad.apply_image(np.zeros((5, 10, 3), np.uint8))[5:] == [1.0, 2.0, 3.0]).all()


def test_resize_by_ratio_follows_the_reference_scale():
    # mmseg: scale (2048 r, 512 r), keep ratio: min(2048 r / long, 512 r / short).
    aug = ResizeByRatio(512, 2048, (1.0, 1.0))
    assert aug.get_transform(np.zeros((300, 400, 3), np.uint8)).new_h == 512
    tfm = aug.get_transform(np.zeros((100, 1000, 3), np.uint8))  # long side bound
    assert (tfm.new_h, tfm.new_w) == (205, 2048)
    aug = ResizeByRatio(512, 2048, (0.5, 0.5))
    assert aug.get_transform(np.zeros((300, 400, 3), np.uint8)).new_h == 256


def test_crop_respects_the_category_area_constraint():
    """A crop where one class covers >= 75% of the labelled pixels is redrawn (up to 10 times)."""
    labels = np.zeros((100, 100), np.uint8)
    labels[:, 60:] = 1  # class 1 on 40% of the image; any 50x50 crop left of x=35 is all class 0
    labels[:5] = 255
    image = np.zeros((100, 100, 3), np.uint8)
    aug = T.RandomCrop_CategoryAreaConstraint("absolute", (50, 50), 0.75, 255)
    np.random.seed(0)
    for _ in range(20):
        crop = aug.get_transform(image, labels)
        part = crop.apply_segmentation(labels)
        counts = np.bincount(part[part != 255].ravel(), minlength=2)
        assert counts.max() < 0.75 * counts.sum()


def test_test_mapper_resizes_only(synthetic, restore_synthetic_registration):
    register_synthetic_dataset(synthetic["root"], seed=0, **SMALL)
    record = DatasetCatalog.get("synthetic_shapes_sem_seg_val")[0]
    out = SemSegDatasetMapper(sem_seg_cfg(crop=48), is_train=False)(record)
    assert out["image"].shape == (3, 48, 48) and (out["height"], out["width"]) == (96, 96)


# ------------------------------------------------------------------------------ ADE20K
def test_ade20k_prepare_and_registration(tmp_path):
    """prepare_ade20k_sem_seg.py shifts labels by -1 (0 -> 255); ade20k_mmseg_sem_seg_* read the
    result with the authors' 150 names, and a missing folder names the prepare step."""
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[7] == "bed "
    names = register_ade20k(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="prepare_ade20k_sem_seg.py"):
            DatasetCatalog.get(names[1])
        base = tmp_path / "ADEChallengeData2016"
        for split in ("training", "validation"):
            (base / "images" / split).mkdir(parents=True)
            (base / "annotations" / split).mkdir(parents=True)
            Image.new("RGB", (6, 4)).save(base / "images" / split / "ADE_1.jpg")
            Image.fromarray(np.array([[0, 1, 150], [2, 0, 7]] * 2, np.uint8)).save(base / "annotations" / split / "ADE_1.png")
        subprocess.run([sys.executable, str(REPO_ROOT / "datasets" / "prepare_ade20k_sem_seg.py"), "--root", str(tmp_path)],
                       check=True, capture_output=True, timeout=120)
        converted = np.asarray(Image.open(base / "annotations_detectron2" / "validation" / "ADE_1.png"))
        assert converted[:2].tolist() == [[255, 0, 149], [1, 255, 6]]
        [record] = DatasetCatalog.get(names[1])
        assert record["sem_seg_file_name"].endswith("annotations_detectron2/validation/ADE_1.png")
        meta = MetadataCatalog.get(names[1])
        assert meta.stuff_classes == list(ADE20K_CLASSES) and meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
        # Detectron2's own registration of the same files keeps its names.
        assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes != meta.stuff_classes
    finally:
        register_ade20k()
