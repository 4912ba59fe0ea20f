"""The demo: DenseCLIPPredictor (vocabulary, presets, score maps), the drawing, and demo.py / its
command line (denseclip.demo_cli: images, video, webcam, window) on real COCO photos and a generated
video, with the tiny random-weight CLIP."""
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
    """Parsed demo arguments for image ``inputs`` (``inputs=None``: none, give --video-input or
    --webcam in ``extra``) and ``output`` (None: no --output)."""
    from denseclip.demo_cli import get_parser

    argv = ["--config-file", str(REPO_ROOT / "configs" / config_file), "--confidence-threshold", "0.0", "--cpu", *map(str, extra)]
    if inputs is not None:
        argv += ["--input", *map(str, inputs)]
    if output is not None:
        argv += ["--output", str(output)]
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
    """Records of the demo's loggers (denseclip.demo_cli, denseclip.predictor; own handler:
    independent of how other tests set up logging)."""
    records = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = ListHandler(level=logging.DEBUG)
    log = logging.getLogger("denseclip")
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

    from denseclip.demo_cli import run_demo

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
    from denseclip.demo_cli import run_demo

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
    from denseclip.demo_cli import get_parser, sanitize_file_name
    from denseclip.predictor import parse_vocabulary

    assert parse_vocabulary(" cat , remote control,,sofa ") == VOCABULARY_NAMES
    assert parse_vocabulary(None) is None
    with pytest.raises(ValueError, match="no class name"):
        parse_vocabulary(" , ")
    # Names are checked once, where they enter the model (model.set_vocabulary, test_denseclip.py).
    assert parse_vocabulary("cat,sofa,cat") == ["cat", "sofa", "cat"]
    with pytest.raises(SystemExit) as exit_info:
        get_parser().parse_args(["--config-file", "x.yaml", "--input", "a.jpg", "--output", "o", "--vocabulary", " ,"])
    assert exit_info.value.code != 0
    assert "--vocabulary" in capsys.readouterr().err
    assert sanitize_file_name("remote control") == "remote_control"
    assert sanitize_file_name("a/b: c?") == "a_b_c"


def test_config_from_arguments(tmp_path):
    from denseclip.demo_cli import get_parser, setup_cfg

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
    from denseclip.demo_cli import expand_inputs

    (tmp_path / "sub").mkdir()
    for name in ["b.jpg", "a.PNG", "notes.txt", "sub/c.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    paths, missing = expand_inputs([str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "sub" / "c.jpg"),
                                    str(tmp_path / "nothing*.jpg"), str(tmp_path / "gone.jpg")])
    assert paths == sorted(str(tmp_path / n) for n in ["a.PNG", "b.jpg", "sub/c.jpg"])
    assert [m for m, _ in missing] == [str(tmp_path / "nothing*.jpg"), str(tmp_path / "gone.jpg")]


def test_score_maps_undo_padding():
    from denseclip.modeling import score_map_probabilities

    # Input padded to 128 x 192, the image inside it 128 x 160, the original image 64 x 80. The
    # logits are a horizontal ramp: the value at a cell's centre is 0.5 * column - 1.
    ramp = (0.5 * torch.arange(6.0) - 1.0).expand(1, 4, 6).clone()
    probability = score_map_probabilities(ramp, (128, 192), (128, 160), (64, 80)).numpy()
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
                                              "INPUT.FORMAT", "RGB"])
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


# ------------------------------------------------------------------------------------ issue 12
def run_demo_script(argv):
    """demo.py's main() in this process (faster than a subprocess): its exit code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


def write_video(path, num_frames=4, size=(72, 96), fps=5.0):
    """A small mp4v video of moving synthetic shapes."""
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    assert writer.isOpened()
    for i in range(num_frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 8 * i, 30), 12, (0, 0, 255), -1)
        cv2.rectangle(frame, (50, 10 + 6 * i), (80, 40 + 6 * i), (0, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def video_frames(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_modules_own_their_parts():
    import denseclip.demo_cli as demo_cli
    import denseclip.predictor as predictor
    import denseclip.visualization as visualization

    # The predictor module has no command line and no drawing; the CLI is demo_cli's.
    for name in ("get_parser", "run_demo", "setup_cfg", "expand_inputs", "draw_predictions", "score_map_overlay"):
        assert not hasattr(predictor, name), name
    assert "argparse" not in vars(predictor)
    for name in ("draw_predictions", "score_map_overlay", "VideoDrawer"):
        assert callable(getattr(visualization, name)), name
    for name in ("get_parser", "run_demo", "setup_cfg", "expand_inputs", "sanitize_file_name"):
        assert callable(getattr(demo_cli, name)), name


def test_misspelt_override_is_a_clear_error(capsys):
    from denseclip.engine import ConfigError, build_config

    config = REPO_ROOT / "configs" / RETINANET
    with pytest.raises(ConfigError) as train_net_error:  # what train_net.py reports (engine.setup)
        build_config(str(config), ["MODEL.WEIGHT", "x.pth"])
    code = run_demo_script(["--config-file", config, "--input", "a.jpg", "--output", "o", "--cpu",
                            "--opts", "MODEL.WEIGHT", "x.pth"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"demo.py: error: {train_net_error.value}" in err
    assert "Invalid config override(s) ['MODEL.WEIGHT', 'x.pth']: Non-existent key: MODEL.WEIGHT" in err
    assert "Traceback" not in err


def test_output_file_for_one_image(photos, tmp_path):
    from denseclip.demo_cli import DemoError, run_demo

    target = tmp_path / "drawn" / "x.png"
    summary = run_demo(demo_args(RETINANET, [photos[0], tmp_path / "missing.jpg"], target, "--vocabulary", VOCABULARY,
                                 "--score-maps", "--max-score-maps", "1"))
    assert summary.exit_code == 0 and target.is_file()  # a file, not a folder named x.png
    assert image_size(target) == image_size(photos[0])
    maps = sorted(p.name for p in target.parent.iterdir() if p != target)
    assert len(maps) == 1 and maps[0].startswith("x_scoremap_") and maps[0].endswith(".png")
    assert sorted(summary.written) == sorted(str(p) for p in target.parent.iterdir())

    # Several images: --output must be a folder; nothing is built or written.
    with pytest.raises(DemoError, match="names an image file, but there are 2 input images"):
        run_demo(demo_args(RETINANET, photos[:2], tmp_path / "y.jpg"))
    assert not (tmp_path / "y.jpg").exists()
    # A folder name (no image extension) is a folder, even for one image.
    run_demo(demo_args(RETINANET, photos[:1], tmp_path / "folder"))
    assert os.listdir(tmp_path / "folder") == [f"{photos[0].stem}.jpg"]


def test_vocabulary_presets(capsys):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    from denseclip.demo_cli import get_parser
    from denseclip.predictor import VOCABULARY_PRESETS, parse_vocabulary

    coco = parse_vocabulary("coco")
    assert coco == [c["name"] for c in COCO_CATEGORIES if c["isthing"]] and len(coco) == 80
    assert coco == MetadataCatalog.get("coco_2017_val").thing_classes
    assert parse_vocabulary(" voc ") == [
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
        "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
    assert parse_vocabulary("cityscapes") == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    lvis = parse_vocabulary("lvis")
    assert len(lvis) == 1203 and lvis[:2] == ["aerosol can", "air conditioner"]
    # Only the exact preset name selects a preset: a list, or a trailing comma, names the class.
    assert parse_vocabulary("coco,") == ["coco"] and parse_vocabulary(["coco"]) == ["coco"]
    assert parse_vocabulary("coco,voc") == ["coco", "voc"]

    args = get_parser().parse_args(["--config-file", "x.yaml", "--input", "a.jpg", "--vocabulary", "cityscapes"])
    assert args.vocabulary == parse_vocabulary("cityscapes")
    with pytest.raises(SystemExit):
        get_parser().parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in VOCABULARY_PRESETS:
        assert f"{name}:" in help_text
    assert '"coco,"' in help_text and "--video-input" in help_text and "--webcam" in help_text


def test_video_input_writes_a_video_with_every_frame(tmp_path):
    from denseclip.demo_cli import DemoError, run_demo
    from denseclip.predictor import parse_vocabulary

    video = write_video(tmp_path / "shapes.mp4", num_frames=4)
    out = tmp_path / "drawn.mp4"
    summary = run_demo(demo_args(RETINANET, None, out, "--video-input", video, "--vocabulary", "voc"))
    assert summary.exit_code == 0 and summary.num_frames == 4 and summary.written == [str(out)]
    assert summary.predictor.class_names == parse_vocabulary("voc")
    frames, source = video_frames(out), video_frames(video)
    assert len(frames) == len(source) == 4 and frames[0].shape == source[0].shape
    assert np.abs(frames[0].astype(np.int16) - source[0].astype(np.int16)).mean() > 2.0  # detections drawn

    # --output a folder: <folder>/<video stem>.mp4.
    summary = run_demo(demo_args(RETINANET, None, tmp_path / "videos", "--video-input", video))
    assert summary.written == [str(tmp_path / "videos" / "shapes.mp4")] and len(video_frames(summary.written[0])) == 4

    with pytest.raises(DemoError, match="no such file"):
        run_demo(demo_args(RETINANET, None, out, "--video-input", tmp_path / "missing.mp4"))
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(DemoError, match="cannot read it as a video"):
        run_demo(demo_args(RETINANET, None, out, "--video-input", tmp_path / "notes.mp4"))
    with pytest.raises(DemoError, match="--score-maps"):
        run_demo(demo_args(RETINANET, None, out, "--video-input", video, "--score-maps"))
    with pytest.raises(DemoError, match="names an image file"):
        run_demo(demo_args(RETINANET, None, tmp_path / "frame.jpg", "--video-input", video))


def test_webcam_arguments_and_missing_camera(monkeypatch, tmp_path, capsys):
    from denseclip.demo_cli import get_parser

    with pytest.raises(SystemExit) as exit_info:
        get_parser().parse_args(["--config-file", "x.yaml", "--webcam", "--input", "a.jpg"])
    assert exit_info.value.code != 0 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        get_parser().parse_args(["--config-file", "x.yaml", "--output", "o"])  # no source at all
    assert "one of the arguments --input --video-input --webcam is required" in capsys.readouterr().err

    opened = []

    class NoCamera:
        def __init__(self, index):
            opened.append(index)

        def isOpened(self):
            return False

    monkeypatch.setattr(cv2, "VideoCapture", NoCamera)
    code = run_demo_script(["--config-file", REPO_ROOT / "configs" / RETINANET, "--webcam", "--output", tmp_path / "w.mp4",
                            "--cpu", "--opts", *FAST_OPTS])
    assert code == 2 and opened == [0]
    assert "demo.py: error: cannot open the webcam (camera 0)" in capsys.readouterr().err


def test_without_output_results_are_shown_in_a_window(photos, tmp_path, monkeypatch, capsys):
    import denseclip.demo_cli as demo_cli

    # This environment's OpenCV is headless: a clear error, before any model is built.
    assert not demo_cli.opencv_has_gui()
    code = run_demo_script(["--config-file", REPO_ROOT / "configs" / RETINANET, "--input", photos[0], "--cpu"])
    assert code == 2
    assert ("demo.py: error: no --output given and OpenCV has no GUI support (opencv-python-headless): give --output"
            in capsys.readouterr().err)

    # With a GUI: imshow + waitKey per drawing (predictions, then score maps); ESC quits.
    shown, keys = [], iter([0, 0, 27])
    monkeypatch.setattr(demo_cli, "opencv_has_gui", lambda: True)
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append(image.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.chdir(tmp_path)
    summary = demo_cli.run_demo(demo_args(RETINANET, photos, None, "--vocabulary", VOCABULARY, "--score-maps",
                                          "--max-score-maps", "1"))
    assert summary.num_images == 2 and summary.written == [] and os.listdir(tmp_path) == []
    assert shown == [image_size(photos[0])] * 2 + [image_size(photos[1])]

    # Video frames in the window, waitKey(1) each; ESC after the second frame.
    video = write_video(tmp_path / "shapes.mp4", num_frames=4)
    shown.clear()
    keys = iter([-1, 27])
    summary = demo_cli.run_demo(demo_args(RETINANET, None, None, "--video-input", video))
    assert summary.num_frames == 2 and len(shown) == 2 and summary.written == []
