"""Data: the synthetic dataset generator, COCO json registration/validation and RobustDatasetMapper."""
import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.structures import BoxMode
from PIL import Image

from denseclip import add_denseclip_config
from denseclip.data import (
    SYNTHETIC_CLASSES,
    BadImageError,
    RobustDatasetMapper,
    default_synthetic_root,
    generate_synthetic_dataset,
    parse_dataset_spec,
    register_coco_json,
    register_datasets_from_spec,
    register_synthetic_dataset,
    register_synthetic_from_config,
    register_tiny_coco,
    validate_coco_json,
)

SMALL = dict(num_train=40, num_val=8, image_size=128)


# ---------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Dict[str, str]:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "shapes", seed=0, **SMALL)


@contextlib.contextmanager
def captured(caplog, logger_name: str) -> Iterator[None]:
    """Route a logger's records to caplog directly (and only there), whatever logging
    configuration (e.g. Detectron2's setup_logger) another test left behind."""
    logger = logging.getLogger(logger_name)
    propagate, level = logger.propagate, logger.level
    logger.addHandler(caplog.handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate, logger.level = propagate, level


@pytest.fixture
def mapper_warnings(caplog) -> pytest.LogCaptureFixture:
    with captured(caplog, "denseclip.data.mapper"):
        yield caplog


@pytest.fixture
def restore_synthetic_registration():
    """Tests that re-register the synthetic datasets put the import-time registration back."""
    yield
    register_synthetic_dataset()


def make_mapper(is_train: bool = True, use_instance_mask: bool = True, mask_format: str = "polygon"):
    return RobustDatasetMapper(
        is_train,
        augmentations=[],
        image_format="RGB",
        use_instance_mask=use_instance_mask,
        instance_mask_format=mask_format,
    )


def save_image(path: Path, image: Image.Image, fmt: str, **kwargs) -> Dict:
    image.save(path, fmt, **kwargs)
    return {"file_name": str(path), "image_id": 1, "annotations": []}


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def warnings_of(caplog) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "denseclip.data.mapper" and r.levelno == logging.WARNING]


def write_json(path: Path, content) -> str:
    path.write_text(json.dumps(content))
    return str(path)


def tiny_coco_dict(annotations: List[Dict], categories=None, width: int = 100, height: int = 80) -> Dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": width, "height": height}],
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}],
    }


def ann(ann_id: int, bbox, segmentation=None, category_id: int = 1, **extra) -> Dict:
    out = {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": bbox, "iscrowd": 0, **extra}
    if segmentation is not None:
        out["segmentation"] = segmentation
    return out


# ---------------------------------------------------------------------------------------- generator
def test_generator_is_deterministic(tmp_path, synthetic):
    again = generate_synthetic_dataset(tmp_path / "again", seed=0, **SMALL)
    other = generate_synthetic_dataset(tmp_path / "other", seed=1, **SMALL)
    for key in ("train_json", "val_json"):
        assert Path(again[key]).read_bytes() == Path(synthetic[key]).read_bytes()
        assert Path(other[key]).read_bytes() != Path(synthetic[key]).read_bytes()
    for split in ("train", "val"):
        names = sorted(os.listdir(synthetic[f"{split}_image_root"]))
        assert names == sorted(os.listdir(again[f"{split}_image_root"]))
        assert len(names) == SMALL[f"num_{split}"]
        for name in names:
            reference = Path(synthetic[f"{split}_image_root"], name).read_bytes()
            assert Path(again[f"{split}_image_root"], name).read_bytes() == reference
        assert Path(other[f"{split}_image_root"], names[0]).read_bytes() != Path(
            synthetic[f"{split}_image_root"], names[0]
        ).read_bytes()


def test_generated_dataset_is_valid_coco(synthetic):
    from pycocotools.coco import COCO

    size = SMALL["image_size"]
    for split in ("train", "val"):
        coco = COCO(synthetic[f"{split}_json"])
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        assert [c["name"] for c in cats] == SYNTHETIC_CLASSES
        assert 6 <= len(SYNTHETIC_CLASSES) <= 8 and len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
        assert len(coco.imgs) == SMALL[f"num_{split}"]
        for image_id, image in coco.imgs.items():
            assert (image["width"], image["height"]) == (size, size)
            with Image.open(Path(synthetic[f"{split}_image_root"], image["file_name"])) as im:
                assert im.format == "JPEG" and im.size == (size, size) and im.mode == "RGB"
            anns = coco.imgToAnns[image_id]
            assert 1 <= len(anns) <= 6
            for a in anns:
                x, y, w, h = a["bbox"]
                assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= size and y + h <= size
                assert a["iscrowd"] == 0 and a["area"] > 0
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
                mask = coco.annToMask(a)
                assert mask.sum() > 0
                ys, xs = np.nonzero(mask)
                assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
    train = COCO(synthetic["train_json"])
    assert {a["category_id"] for a in train.anns.values()} == set(range(1, len(SYNTHETIC_CLASSES) + 1))


def test_generated_masks_reflect_occlusion(synthetic):
    from pycocotools.coco import COCO

    coco = COCO(synthetic["train_json"])
    occluded_pairs = 0
    for image_id in coco.imgs:
        anns = sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, (a, m) in enumerate(zip(anns, masks)):
            # Visible parts of different objects do not overlap (up to polygon boundary pixels).
            for m2 in masks[i + 1 :]:
                assert (m & m2).sum() <= 0.05 * min(m.sum(), m2.sum())
            # No object is hidden below ~30% (measured on polygons, so a little lower).
            assert m.sum() >= 0.2 * a["unoccluded_area"]
            x, y, w, h = a["bbox"]
            for b in anns[i + 1 :]:  # drawn later, hence on top
                bx, by, bw, bh = b["bbox"]
                boxes_overlap = x < bx + bw and bx < x + w and y < by + bh and by < y + h
                if boxes_overlap and m.sum() < 0.9 * a["unoccluded_area"]:
                    occluded_pairs += 1
    assert occluded_pairs >= 5
    # Unoccluded objects: the polygon covers the whole drawn shape.
    ratios = [coco.annToMask(a).sum() / a["unoccluded_area"] for a in coco.anns.values()]
    assert 0.9 <= np.median(ratios) <= 1.05


def test_generator_is_idempotent_and_atomic(tmp_path):
    root = tmp_path / "shapes"
    paths = generate_synthetic_dataset(root, num_train=3, num_val=2, image_size=64)
    watched = [paths["train_json"], paths["val_json"], paths["manifest"], os.path.join(paths["train_image_root"], "000000.jpg")]
    mtimes = [os.stat(p).st_mtime_ns for p in watched]
    assert generate_synthetic_dataset(root, num_train=3, num_val=2, image_size=64) == paths
    assert [os.stat(p).st_mtime_ns for p in watched] == mtimes
    assert sorted(os.listdir(tmp_path)) == ["shapes"]  # no temporary folder left behind

    generate_synthetic_dataset(root, num_train=4, num_val=2, image_size=64)  # other parameters
    assert len(json.loads(Path(paths["train_json"]).read_text())["images"]) == 4
    assert len(os.listdir(paths["train_image_root"])) == 4
    assert sorted(os.listdir(tmp_path)) == ["shapes"]

    os.remove(os.path.join(paths["val_image_root"], "000001.jpg"))  # incomplete -> regenerated
    generate_synthetic_dataset(root, num_train=4, num_val=2, image_size=64)
    assert os.path.isfile(os.path.join(paths["val_image_root"], "000001.jpg"))


def test_generator_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_synthetic_dataset(tmp_path, num_train=1, num_val=1, image_size=64)
    assert (tmp_path / "precious.txt").read_text() == "not a dataset"


# ---------------------------------------------------------------------------------------- registration
def test_synthetic_registered_on_import(monkeypatch, tmp_path):
    assert "synthetic_shapes_train" in DatasetCatalog.list() and "synthetic_shapes_val" in DatasetCatalog.list()
    meta = MetadataCatalog.get("synthetic_shapes_val")
    assert meta.thing_classes == SYNTHETIC_CLASSES and meta.evaluator_type == "coco"
    monkeypatch.setenv("DENSECLIP_SYNTHETIC_ROOT", str(tmp_path / "elsewhere"))
    assert default_synthetic_root() == str(tmp_path / "elsewhere")
    monkeypatch.delenv("DENSECLIP_SYNTHETIC_ROOT")
    assert default_synthetic_root() == os.path.abspath("datasets/synthetic_shapes")


def test_register_synthetic_is_lazy_and_loads(tmp_path, restore_synthetic_registration):
    root = tmp_path / "shapes"
    names = register_synthetic_dataset(root, num_train=5, num_val=3, image_size=64, seed=2)
    assert names == ["synthetic_shapes_train", "synthetic_shapes_val"]
    assert not root.exists()  # nothing generated before first use
    meta = MetadataCatalog.get("synthetic_shapes_train")
    assert meta.thing_classes == SYNTHETIC_CLASSES
    assert meta.json_file == str(root / "annotations" / "instances_train.json")
    assert meta.image_root == str(root / "train")
    dicts = DatasetCatalog.get("synthetic_shapes_train")
    assert len(dicts) == 5 and len(DatasetCatalog.get("synthetic_shapes_val")) == 3
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and (d["height"], d["width"]) == (64, 64)
        assert d["annotations"] and all(0 <= a["category_id"] < len(SYNTHETIC_CLASSES) for a in d["annotations"])


def test_register_synthetic_from_config(tmp_path, restore_synthetic_registration):
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp_path / "a")
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 2
    register_synthetic_from_config(cfg)
    assert MetadataCatalog.get("synthetic_shapes_val").json_file == str(tmp_path / "a" / "annotations" / "instances_val.json")
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp_path / "b")  # another root re-registers
    register_synthetic_from_config(cfg)
    assert MetadataCatalog.get("synthetic_shapes_val").image_root == str(tmp_path / "b" / "val")
    assert cfg.DATASETS.REGISTER == []


def test_tiny_coco_registration(tiny_coco_root):
    assert register_tiny_coco(tiny_coco_root) == ["tiny_coco_train", "tiny_coco_val"]
    dicts = DatasetCatalog.get("tiny_coco_val")
    assert len(dicts) == 50
    meta = MetadataCatalog.get("tiny_coco_val")
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
    assert meta.evaluator_type == "coco"
    mapper = make_mapper()
    out = mapper(next(d for d in dicts if d["annotations"]))
    assert out["image"].shape[0] == 3 and len(out["instances"]) > 0


def test_register_coco_json_and_specs(tmp_path):
    (tmp_path / "imgs").mkdir()
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # unsorted, non-contiguous ids
    good = write_json(tmp_path / "good.json", tiny_coco_dict([ann(1, [1, 1, 5, 5], category_id=7)], categories))
    summary = register_coco_json("test_data_good", good, tmp_path / "imgs")
    meta = MetadataCatalog.get("test_data_good")
    assert meta.thing_classes == ["cat", "dog"] and summary["thing_classes"] == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert register_coco_json("test_data_good", good, tmp_path / "imgs") == summary  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        register_coco_json("test_data_good", write_json(tmp_path / "other.json", tiny_coco_dict([])), tmp_path / "imgs")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        register_coco_json("test_data_noroot", good, tmp_path / "no_such_folder")
    assert "test_data_noroot" not in DatasetCatalog.list()

    assert register_datasets_from_spec([f"test_data_spec={good}:{tmp_path / 'imgs'}"]) == ["test_data_spec"]
    assert len(DatasetCatalog.get("test_data_spec")) == 1
    assert parse_dataset_spec("n=C:/d/a.json:C:/d/imgs") == ("n", "C:/d/a.json", "C:/d/imgs")
    assert parse_dataset_spec("n=/d/a.txt:/d/imgs") == ("n", "/d/a.txt", "/d/imgs")
    for bad in ("no_equal_sign", "n=/d/a.json", "=a.json:imgs"):
        with pytest.raises(ValueError, match="name=path/to/instances.json:path/to/image_root"):
            register_datasets_from_spec([bad])


def test_validation_rejects_files_that_are_not_coco(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        validate_coco_json(missing)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_coco_json("test_data_missing", missing, tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        validate_coco_json(broken)
    not_coco = write_json(tmp_path / "labels.json", {"images": [], "labels": []})
    missing = r"labels.json is not a COCO instances json: missing key\(s\) \['annotations', 'categories'\]"
    with pytest.raises(ValueError, match=missing) as e:
        register_coco_json("test_data_not_coco", not_coco, tmp_path)
    assert '"categories" (a list of {"id", "name"})' in str(e.value)
    assert "test_data_not_coco" not in DatasetCatalog.list()
    a_list = write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(ValueError, match=r"missing key\(s\) \['images', 'annotations', 'categories'\]"):
        validate_coco_json(a_list)
    no_bbox = write_json(tmp_path / "nobbox.json", tiny_coco_dict([{"id": 1, "image_id": 1, "category_id": 1}]))
    with pytest.raises(ValueError, match=r"nobbox.json: 1 of the 1 entries of \"annotations\" lack"):
        validate_coco_json(no_bbox)
    empty_bbox = write_json(tmp_path / "emptybbox.json", tiny_coco_dict([ann(1, [])]))
    with pytest.raises(ValueError, match="not 4 finite numbers"):
        validate_coco_json(empty_bbox)
    duplicated = write_json(tmp_path / "dup.json", tiny_coco_dict([ann(5, [1, 1, 2, 2]), ann(5, [1, 1, 3, 3])]))
    with pytest.raises(ValueError, match="not unique; duplicated: 5"):
        validate_coco_json(duplicated)


def test_validation_rejects_unknown_category_ids(tmp_path):
    anns = [ann(1, [1, 1, 5, 5], category_id=1), ann(2, [1, 1, 5, 5], category_id=9), ann(3, [1, 1, 5, 5], category_id=9),
            ann(4, [1, 1, 5, 5], category_id=12)]
    path = write_json(tmp_path / "unknown_cats.json", tiny_coco_dict(anns))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match=r"unknown_cats.json: 3 annotation\(s\) use category ids that are not in \"categories\": 9, 12") :
        register_coco_json("test_data_unknown_cats", path, tmp_path / "imgs")
    assert "test_data_unknown_cats" not in DatasetCatalog.list()


def test_validation_summary_counts_fixes(tmp_path, caplog):
    with captured(caplog, "denseclip.data.register"):
        anns = [
            ann(1, [10, 10, 20, 20], [[10, 10, 30, 10, 30, 30]]),
            ann(2, [90, 70, 30, 30], [[90, 70, 99, 70, 99, 79]]),  # reaches outside: clipped
            ann(3, [5, 5, 0, 10], [[5, 5, 5, 15, 5, 10]]),  # zero width: degenerate
            ann(4, [200, 200, 10, 10], [[200, 200, 210, 200, 210, 210]]),  # outside the image
            ann(5, [10, 10, 5, 5], []),  # no polygon
            ann(6, [10, 10, 5, 5], [[1, 1, 5, 5]]),  # a 2-point polygon
            ann(7, [0, 0, 100, 80], {"size": [80, 100], "counts": [0, 8000]}, iscrowd=1),
            {**ann(8, [1, 1, 2, 2]), "image_id": 99},  # no such image
        ]
        data = tiny_coco_dict(anns)
        data["images"].append({"id": 2, "file_name": "b.jpg", "width": 10, "height": 10})
        summary = validate_coco_json(write_json(tmp_path / "fixable.json", data))
    assert summary["num_images"] == 2 and summary["num_annotations"] == 8 and summary["num_categories"] == 2
    assert summary["num_crowd"] == 1 and summary["num_orphan_annotations"] == 1
    assert summary["num_images_without_annotations"] == 1
    assert summary["num_boxes_clipped"] == 1 and summary["num_boxes_degenerate"] == 2
    assert summary["num_polygons_invalid"] == 1 and summary["num_instances_without_valid_mask"] == 2
    messages = " ".join(r.getMessage() for r in caplog.records if r.name == "denseclip.data.register")
    assert "fixable.json: 1 boxes reach outside their image" in messages
    assert "2 boxes have no area inside their image" in messages


# ---------------------------------------------------------------------------------------- bad images
def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00\x13 definitely not an image" * 40)


def _truncated(path: Path) -> None:
    buf = io.BytesIO()
    noise_rgb(64, 64).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path) -> None:
    pass


@pytest.mark.parametrize(
    "make_bad, reason",
    [(_corrupt, "not a recognised image format"), (_truncated, "truncated"), (_zero_byte, "empty (0 bytes)"),
     (_missing, "file not found")],
)
def test_bad_image_is_skipped_in_training_with_one_warning(tmp_path, mapper_warnings, make_bad, reason):
    path = tmp_path / f"bad_{make_bad.__name__}.jpg"
    make_bad(path)
    mapper = make_mapper()
    record = {"file_name": str(path), "image_id": 3, "height": 64, "width": 64, "annotations": []}
    assert mapper(record) is None
    assert mapper(record) is None  # the same file again: no second warning
    warnings = warnings_of(mapper_warnings)
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage() and reason in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()

    with pytest.raises(BadImageError, match=re.escape(reason)) as e:
        make_mapper(is_train=False)(record)
    assert str(path) in str(e.value)


def test_size_mismatch_is_a_bad_image(tmp_path, mapper_warnings):
    record = save_image(tmp_path / "a.png", noise_rgb(30, 20), "PNG")
    record.update(width=20, height=30)
    assert make_mapper()(record) is None
    assert "decoded size 30x20 differs from the 20x30" in warnings_of(mapper_warnings)[0].getMessage()


def test_unexpected_annotation_error_is_skipped_in_training(tmp_path, mapper_warnings):
    record = save_image(tmp_path / "a.png", noise_rgb(16, 16), "PNG")
    record["annotations"] = [{"bbox": [0, 0, 8, 8], "category_id": 0}]  # no "bbox_mode"
    assert make_mapper()(record) is None
    (warning,) = warnings_of(mapper_warnings)
    assert str(tmp_path / "a.png") in warning.getMessage() and "KeyError" in warning.getMessage()


def test_too_many_consecutive_failures_stop_training(tmp_path):
    mapper = RobustDatasetMapper(True, augmentations=[], image_format="RGB", max_consecutive_failures=3)
    record = {"file_name": str(tmp_path / "nope.jpg"), "image_id": 1}
    assert mapper(record) is None and mapper(record) is None
    with pytest.raises(RuntimeError, match="3 training samples in a row could not be mapped"):
        mapper(record)


# ---------------------------------------------------------------------------------------- image modes
def _rgb_of(out) -> np.ndarray:
    image = out["image"]
    assert image.dtype.is_floating_point is False and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy().astype(int)


def test_grayscale_rgba_palette_cmyk_become_rgb(tmp_path):
    mapper = make_mapper()
    gray = _rgb_of(mapper(save_image(tmp_path / "g.png", Image.new("L", (12, 10), 77), "PNG")))
    assert gray.shape == (10, 12, 3) and (gray == 77).all()
    rgba = _rgb_of(mapper(save_image(tmp_path / "a.png", Image.new("RGBA", (12, 10), (10, 200, 30, 128)), "PNG")))
    assert rgba.shape == (10, 12, 3) and (rgba == (10, 200, 30)).all()
    palette = Image.new("P", (12, 10), 1)
    palette.putpalette([0, 0, 0, 0, 0, 250] + [0] * 762)
    pal = _rgb_of(mapper(save_image(tmp_path / "p.png", palette, "PNG")))
    assert pal.shape == (10, 12, 3) and (pal == (0, 0, 250)).all()
    cmyk = _rgb_of(mapper(save_image(tmp_path / "c.jpg", Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)))
    assert cmyk.shape == (8, 16, 3)
    assert (np.abs(cmyk - (255, 0, 0)) <= 8).all()  # cyan-free, magenta+yellow = red


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    record = save_image(tmp_path / "deep.png", Image.fromarray(values), "PNG")
    assert Image.open(record["file_name"]).mode == "I;16"
    rgb = _rgb_of(make_mapper()(record))
    assert rgb.shape == (4, 64, 3)
    np.testing.assert_allclose(rgb[..., 0], values / 257.0, atol=1)
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.max() == 255 and rgb.min() == 0


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high: left half red, right half blue
    raw[:, :20] = (255, 0, 0)
    raw[:, 20:] = (0, 0, 255)
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[274] = 6  # "rotate 90 degrees clockwise to display"
    record = save_image(tmp_path / "rotated.jpg", image, "JPEG", quality=95, exif=exif.tobytes())
    record.update(width=20, height=40)  # sizes as displayed, like COCO
    rgb = _rgb_of(make_mapper()(record))
    assert rgb.shape == (40, 20, 3)
    assert (np.abs(rgb[3:17].mean((0, 1)) - (255, 0, 0)) < 20).all()  # the left half is now on top
    assert (np.abs(rgb[23:37].mean((0, 1)) - (0, 0, 255)) < 20).all()


# ---------------------------------------------------------------------------------------- annotations
def _annotated_record(tmp_path) -> Dict:
    record = save_image(tmp_path / "scene.png", noise_rgb(100, 80), "PNG")
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]

    def obj(box, segmentation, **extra):
        return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": segmentation, **extra}

    record.update(
        height=80,
        width=100,
        annotations=[
            obj([10, 10, 20, 20], square),  # good
            obj([90, 70, 30, 30], [[90, 70, 130, 70, 130, 100]]),  # reaches outside: clipped
            obj([5, 5, 0, 10], square),  # zero width
            obj([50, 5, -10, 10], square),  # negative width
            obj([200, 200, 10, 10], square),  # entirely outside
            obj([40, 40, 10, 10], []),  # empty polygon list
            obj([40, 40, 10, 10], [[40, 40, 45, 45]]),  # a polygon of 2 points
            obj([20, 20, 20, 20], [[20, 20, 40, 40, 40, 20, 20, 40]]),  # self-intersecting "bow tie"
            obj([0, 0, 100, 80], square, iscrowd=1),  # crowd
            obj([float("nan"), 0, 5, 5], square),  # not finite
        ],
    )
    return record


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_annotations_are_repaired(tmp_path, mask_format):
    out = make_mapper(mask_format=mask_format)(_annotated_record(tmp_path))
    instances = out["instances"]
    boxes = instances.gt_boxes.tensor.numpy()
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [90, 70, 100, 80], [20, 20, 40, 40]])
    assert (boxes[:, [0, 2]] <= 100).all() and (boxes[:, [1, 3]] <= 80).all()
    masks = instances.gt_masks
    bitmasks = masks.tensor if mask_format == "bitmask" else None
    if bitmasks is None:
        from detectron2.structures import BitMasks

        bitmasks = BitMasks.from_polygon_masks(masks, 80, 100).tensor
    areas = bitmasks.flatten(1).sum(1)
    assert (areas > 0).all()  # the bow tie rasterises to a non-empty mask


def test_without_masks_instances_keep_their_boxes(tmp_path):
    out = make_mapper(use_instance_mask=False)(_annotated_record(tmp_path))
    assert len(out["instances"]) == 5  # good, clipped, empty polygon, 2-point polygon, bow tie
    assert not out["instances"].has("gt_masks")


def test_images_without_or_with_crowd_only_annotations_are_kept(tmp_path):
    record = save_image(tmp_path / "empty.png", noise_rgb(16, 16), "PNG")
    assert len(make_mapper()(record)["instances"]) == 0
    record["annotations"] = [
        {"bbox": [0, 0, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 1,
         "segmentation": [[0, 0, 8, 0, 8, 8]]}
    ]
    assert len(make_mapper()(record)["instances"]) == 0


def test_mapper_from_config_and_evaluation_mode(tmp_path):
    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TEST = 40
    record = _annotated_record(tmp_path)
    out = RobustDatasetMapper(cfg, is_train=False)(record)
    assert out["image"].shape == (3, 40, 50) and "annotations" not in out and "instances" not in out


def test_train_loader_keeps_going_past_bad_images(tmp_path, mapper_warnings):
    dicts = []
    for i in range(6):
        record = save_image(tmp_path / f"good{i}.jpg", noise_rgb(48, 40, seed=i), "JPEG")
        record.update(image_id=i, height=40, width=48, annotations=[
            {"bbox": [4, 4, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": i % 2}])
        dicts.append(record)
    _corrupt(tmp_path / "corrupt.jpg")
    bad = [str(tmp_path / "corrupt.jpg"), str(tmp_path / "missing.jpg")]
    dicts[2:2] = [{"file_name": f, "image_id": 10 + k, "height": 40, "width": 48, "annotations": []} for k, f in enumerate(bad)]

    cfg = get_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.MODEL.MASK_ON = False
    loader = build_detection_train_loader(
        dataset=dicts, mapper=RobustDatasetMapper(cfg, is_train=True), total_batch_size=2, num_workers=0,
        aspect_ratio_grouping=False,
    )
    seen = set()
    for _, batch in zip(range(12), loader):
        assert len(batch) == 2
        for sample in batch:
            assert sample["image"].shape == (3, 40, 48) and len(sample["instances"]) == 1
            seen.add(sample["file_name"])
    assert seen == {d["file_name"] for d in dicts if d["file_name"] not in bad}
    messages = [r.getMessage() for r in warnings_of(mapper_warnings)]
    assert len(messages) == 2
    assert all(sum(f"image {f}:" in m for m in messages) == 1 for f in bad)
