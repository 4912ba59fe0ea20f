"""The demo: DenseCLIPPredictor (vocabulary, score maps) and demo.py / run_demo on real COCO photos
with the tiny random-weight CLIP."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config

MASK_RCNN = "COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml"
RETINANET = "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml"
VOCABULARY = "cat,remote control,sofa"
VOCABULARY_NAMES = ["cat", "remote control", "sofa"]
FAST_OPTS = [
    "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "MODEL.CLIP.PRETRAINED", "",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "TEST.DETECTIONS_PER_IMAGE", "5",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
]


def demo_args(config_file, inputs, output, *extra, opts=()):
    from denseclip.predictor import get_parser

    argv = ["--config-file", str(REPO_ROOT / "configs" / config_file), "--input", *map(str, inputs),
            "--output", str(output), "--confidence-threshold", "0.0", "--cpu", *extra]
    return get_parser().parse_args(argv + ["--opts", *FAST_OPTS, *opts])


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-image inference on tiny inputs: one thread is as fast, and robust to shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def photos(tiny_coco_root):
    paths = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[:3]
    assert len(paths) == 3
    return paths


@pytest.fixture
def demo_log():
    """Records of the demo's logger (own handler: independent of how other tests set up logging)."""
    records = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = ListHandler(level=logging.DEBUG)
    log = logging.getLogger("denseclip.predictor")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


def image_size(path):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not readable by cv2"
    return image.shape


@pytest.mark.parametrize("config_file", [MASK_RCNN, RETINANET])
def test_demo_draws_vocabulary_detections_and_score_maps(config_file, photos, tmp_path, capsys):
    from detectron2.data import MetadataCatalog

    from denseclip.predictor import run_demo

    out = tmp_path / "out"
    # The same photo twice (file + glob) is processed once.
    inputs = list(photos) + [str(photos[0].parent / f"[{photos[0].name[0]}]{photos[0].name[1:]}")]
    summary = run_demo(demo_args(config_file, inputs, out, "--vocabulary", VOCABULARY, "--score-maps"))

    assert summary.exit_code == 0 and summary.num_images == 3 and summary.failed == []
    assert "3 image(s) written" in capsys.readouterr().out
    expected = set()
    for photo in photos:
        shape = image_size(photo)
        drawn = cv2.imread(str(out / f"{photo.stem}.jpg"))
        assert drawn is not None and drawn.shape == shape
        # Detections were drawn: the output is not a re-encoded copy of the input.
        assert np.abs(drawn.astype(np.int16) - cv2.imread(str(photo)).astype(np.int16)).mean() > 2.0
        expected.add(f"{photo.stem}.jpg")
        for name in ("cat", "remote_control", "sofa"):
            assert image_size(out / f"{photo.stem}_scoremap_{name}.jpg") == shape
            expected.add(f"{photo.stem}_scoremap_{name}.jpg")
    assert set(os.listdir(out)) == expected
    assert sorted(Path(p).name for p in summary.written) == sorted(expected)

    predictor = summary.predictor
    assert predictor.class_names == VOCABULARY_NAMES
    assert predictor.metadata.thing_classes == VOCABULARY_NAMES  # the labels the Visualizer draws
    # The registered dataset's metadata is not touched.
    assert len(MetadataCatalog.get("coco_2017_val").thing_classes) == 80
    assert MetadataCatalog.get("coco_2017_val").thing_classes[0] == "person"

    image = cv2.imread(str(photos[0]))
    instances = predictor(image)["instances"]
    assert len(instances) > 0 and int(instances.pred_classes.max()) <= 2
    assert instances.image_size == image.shape[:2]
    if config_file == MASK_RCNN:
        assert instances.pred_masks.shape[-2:] == image.shape[:2]


def test_unreadable_inputs_are_reported_and_skipped(photos, tmp_path, demo_log, capsys):
    from denseclip.predictor import run_demo

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    summary = run_demo(demo_args(MASK_RCNN, [photos[0], empty, text, missing], out, "--vocabulary", VOCABULARY))

    assert summary.exit_code == 0 and summary.num_images == 1
    assert image_size(out / f"{photos[0].stem}.jpg") == image_size(photos[0])
    assert os.listdir(out) == [f"{photos[0].stem}.jpg"]
    assert sorted(p for p, _ in summary.failed) == sorted(map(str, [empty, text, missing]))
    warnings = [r.getMessage() for r in demo_log if r.levelno >= logging.WARNING]
    for path, reason in [(empty, "empty"), (text, "not an image"), (missing, "no such file")]:
        lines = [m for m in warnings if str(path) in m]
        assert len(lines) == 1, (path, warnings)  # one line per file, naming it and the reason
        assert reason in lines[0]
    assert "MODEL.WEIGHTS is empty" in " ".join(warnings)  # random weights are announced
    summary_line = capsys.readouterr().out
    assert "1 image(s) written" in summary_line and "3 failed" in summary_line

    # Nothing processable: non-zero exit code, and no model is built for nothing.
    none = run_demo(demo_args(MASK_RCNN, [missing, str(tmp_path / "*.png")], tmp_path / "out2"))
    assert none.exit_code == 1 and none.num_images == 0 and none.predictor is None
    assert "0 image(s) written" in capsys.readouterr().out


def test_vocabulary_parsing_and_cli_errors(capsys):
    from denseclip.predictor import get_parser, parse_vocabulary, sanitize_file_name

    assert parse_vocabulary(" cat , remote control,,sofa ") == VOCABULARY_NAMES
    assert parse_vocabulary(None) is None
    with pytest.raises(ValueError, match="no class name"):
        parse_vocabulary(" , ")
    with pytest.raises(ValueError, match="duplicate class names.*: cat"):
        parse_vocabulary("cat,sofa,cat")
    with pytest.raises(SystemExit) as exit_info:
        get_parser().parse_args(["--config-file", "x.yaml", "--input", "a.jpg", "--output", "o", "--vocabulary", " ,"])
    assert exit_info.value.code != 0
    assert "--vocabulary" in capsys.readouterr().err
    assert sanitize_file_name("remote control") == "remote_control"
    assert sanitize_file_name("a/b: c?") == "a_b_c"


def test_config_from_arguments(tmp_path):
    from denseclip.predictor import get_parser, setup_cfg

    config = str(REPO_ROOT / "configs" / MASK_RCNN)
    args = get_parser().parse_args(["--config-file", config, "--input", "a.jpg", "--output", str(tmp_path),
                                    "--confidence-threshold", "0.3", "--cpu", "--opts", "MODEL.WEIGHTS", "m.pth"])
    cfg = setup_cfg(args)
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3 and cfg.MODEL.RETINANET.SCORE_THRESH_TEST == 0.3
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == "m.pth"
    assert cfg.MODEL.CLIP.PRETRAINED == ""  # the checkpoint holds CLIP too: nothing to fetch
    # Explicit --opts win over the --confidence-threshold default.
    args = get_parser().parse_args(["--config-file", config, "--input", "a.jpg", "--output", str(tmp_path),
                                    "--opts", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05"])
    assert setup_cfg(args).MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05
    assert setup_cfg(args).MODEL.RETINANET.SCORE_THRESH_TEST == 0.5


def test_expand_inputs_files_folders_globs(tmp_path):
    from denseclip.predictor import expand_inputs

    (tmp_path / "sub").mkdir()
    for name in ["b.jpg", "a.PNG", "notes.txt", "sub/c.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    paths, missing = expand_inputs([str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "sub" / "c.jpg"),
                                    str(tmp_path / "nothing*.jpg"), str(tmp_path / "gone.jpg")])
    assert paths == sorted(str(tmp_path / n) for n in ["a.PNG", "b.jpg", "sub/c.jpg"])
    assert [m for m, _ in missing] == [str(tmp_path / "nothing*.jpg"), str(tmp_path / "gone.jpg")]


def test_score_maps_undo_padding():
    from denseclip.predictor import score_map_probabilities

    # Input padded to 128 x 192, the image inside it 128 x 160, the original image 64 x 80. The
    # logits are a horizontal ramp: the value at a cell's centre is 0.5 * column - 1.
    ramp = (0.5 * torch.arange(6.0) - 1.0).expand(1, 4, 6).clone()
    probability = score_map_probabilities(ramp, (128, 192), (128, 160), (64, 80))
    assert probability.shape == (1, 64, 80) and probability.dtype == np.float32
    logit = np.log(probability / (1 - probability))
    # The right edge of the original image is x = 158.5 in the padded input: column 4.47, not the
    # padding's last column (which stretching the whole padded map over the image would give).
    np.testing.assert_allclose(logit[0, :, -1], 0.5 * 4.46875 - 1.0, atol=1e-4)
    np.testing.assert_allclose(logit[0, :, 0], -1.0, atol=1e-4)  # clamped at the first cell centre
    assert np.all(np.diff(logit[0, 10]) >= -1e-6)


def test_predictor_score_maps_and_class_names_from_vocabulary(photos):
    from denseclip.predictor import DenseCLIPPredictor

    # No CLASS_NAMES and unregistered datasets: the model is built with the vocabulary.
    cfg = load_config(MASK_RCNN, FAST_OPTS + ["DATASETS.TRAIN", ("demo_unregistered",), "DATASETS.TEST", ("demo_unregistered",),
                                              "INPUT.FORMAT", "RGB"], resolve_classes=False)
    predictor = DenseCLIPPredictor(cfg, vocabulary=VOCABULARY)
    assert predictor.class_names == VOCABULARY_NAMES and predictor.model.roi_heads.num_classes == 3
    with pytest.raises(ValueError, match="class names"):
        DenseCLIPPredictor(cfg)

    image = np.ascontiguousarray(cv2.imread(str(photos[0]))[:300, :420])
    assert image.shape == (300, 420, 3)  # resized to 128 x 179, padded to 128 x 192
    inputs = predictor._inputs(image)  # RGB model input from a BGR image, short side 128
    assert min(inputs["image"].shape[-2:]) == 128 and (inputs["height"], inputs["width"]) == image.shape[:2]
    small = cv2.resize(image, tuple(inputs["image"].shape[-2:][::-1]), interpolation=cv2.INTER_LINEAR)
    assert np.abs(inputs["image"][0].numpy() - small[:, :, 2]).mean() < 3.0

    maps, names = predictor.score_maps(image)
    assert names == VOCABULARY_NAMES and maps.shape == (3,) + image.shape[:2]
    assert maps.dtype == np.float32 and 0.0 < maps.min() and maps.max() < 1.0
    # The same maps come out of the detection pass; max_score_maps keeps the highest classes.
    _, (same, same_names) = predictor.predict(image, with_score_maps=True)
    np.testing.assert_allclose(same, maps, atol=1e-5)
    top, top_names = predictor.score_maps(image, max_classes=2)
    peaks = maps.reshape(3, -1).max(axis=1)
    assert top_names == [names[i] for i in np.argsort(-peaks)[:2]]
    np.testing.assert_allclose(top, maps[np.argsort(-peaks)[:2]], atol=1e-5)
    # They are the sigmoid of the backbone's logits (cosine / 0.07) upsampled over the image.
    with torch.no_grad():
        images = predictor.model.preprocess_image([inputs])
        logits = predictor.model.extract_features(images).score_map[0]
    assert images.tensor.shape[-2:] != images.image_sizes[0]  # this input is padded
    lo, hi = torch.sigmoid(logits.min()).item(), torch.sigmoid(logits.max()).item()
    assert lo - 1e-6 <= maps.min() and maps.max() <= hi + 1e-6

    predictor.set_vocabulary(["cat", "dog"])
    assert predictor.metadata.thing_classes == ["cat", "dog"]
    assert predictor(image)["instances"].pred_classes.max() <= 1

    # Stock heads keep their training classes: a clear error, nothing changed.
    stock = DenseCLIPPredictor(load_config("COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml", FAST_OPTS))  # the paper's heads
    assert len(stock.class_names) == 80 and stock.metadata.thing_classes == stock.class_names
    with pytest.raises(ValueError, match="language-guided"):
        stock.set_vocabulary(VOCABULARY)
    assert len(stock.metadata.thing_classes) == 80


def test_demo_script_end_to_end(photos, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(REPO_ROOT / "demo.py"), "--config-file", str(REPO_ROOT / "configs" / RETINANET),
               "--input", str(photos[1]), str(tmp_path / "missing.jpg"), "--output", str(out),
               "--vocabulary", VOCABULARY, "--confidence-threshold", "0.0", "--score-maps", "--max-score-maps", "2",
               "--cpu", "--opts", *FAST_OPTS]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 image(s) written" in output and "1 failed" in output
    assert "missing.jpg" in output and "no such file" in output
    assert image_size(out / f"{photos[1].stem}.jpg") == image_size(photos[1])
    maps = sorted(p.name for p in out.glob(f"{photos[1].stem}_scoremap_*.jpg"))
    assert len(maps) == 2  # capped by --max-score-maps
    assert all(image_size(out / m) == image_size(photos[1]) for m in maps)

def test_predictor_loads_weights_then_swaps_vocabulary(tmp_path):
    from denseclip.predictor import DenseCLIPPredictor

    trained = DenseCLIPPredictor(load_config(RETINANET, FAST_OPTS))
    weights = tmp_path / "model.pth"
    torch.save({"model": trained.model.state_dict()}, weights)

    loaded = DenseCLIPPredictor(load_config(RETINANET, FAST_OPTS + ["MODEL.WEIGHTS", str(weights)]), vocabulary=VOCABULARY)
    assert loaded.class_names == VOCABULARY_NAMES
    reference = trained.model.state_dict()
    for name, value in loaded.model.state_dict().items():
        if "fpn_lateral5.weight" in name or "top_block.p6.weight" in name:  # score-map columns re-indexed
            continue
        torch.testing.assert_close(value, reference[name], msg=name)

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DenseCLIPPredictor(load_config(RETINANET, FAST_OPTS + ["MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")]))
