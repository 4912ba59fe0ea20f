"""Bad input gets a one-line error naming the file or value and the fix (exit status 2, no
traceback), nothing is silently wrong, nothing is overwritten: the web demo (large uploads,
threshold, port), the authors'-checkpoint converter, own segmentation data, train_net --eval-only,
the export command line, and the log noise of every command. Tiny inputs, CPU."""
import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "tools"))
sys.path.insert(0, str(REPO_ROOT / "tools" / "deploy"))

SYNTHETIC = "Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"
TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "192", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "5"]


def run_script(args, timeout=300) -> subprocess.CompletedProcess:
    """A command line in a subprocess, with Python's default warning filters (none ignored)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT / "projects" / "DenseCLIP"))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT), env=env)


def assert_one_line_error(text: str, program: str, *parts: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1 and "Traceback" not in text, text
    for part in parts:
        assert part in errors[0], (part, errors[0])


def exit_error(capsys, call) -> str:
    """Run ``call``; it must exit with status 2. Returns stderr."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------- web demo
@pytest.fixture(scope="module")
def session():
    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession

    torch.manual_seed(0)
    cfg = load_config(SYNTHETIC, TINY)
    cfg.freeze()
    return WebDemoSession(DenseCLIPPredictor(cfg, vocabulary="cat, remote control, sofa"), max_side=160)


def test_large_upload_table_is_in_the_uploaded_images_pixels(session, tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    upload = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # 4x --max-side 160
    path = tmp_path / "large.png"
    Image.fromarray(upload).save(path)
    result = session.run(str(path), "cat, remote control, sofa", 0.0)
    assert result.ok and result.detections, result.message
    assert "in the uploaded image's pixels" in result.message
    # What the model saw: the upload scaled down to 160 x 120; its boxes x 4 are the table's.
    scaled = cv2.resize(upload[:, :, ::-1], (160, 120), interpolation=cv2.INTER_AREA)
    instances = session.predictor(np.ascontiguousarray(scaled))["instances"]
    expected = instances.pred_boxes.tensor.numpy() * 4
    got = np.array([row[2:] for row in result.detections], dtype=float)
    np.testing.assert_allclose(got, expected, atol=0.06)


@pytest.mark.parametrize("threshold", [-3, 7, "abc", float("nan")])
def test_score_threshold_out_of_range_is_a_message(session, photo_or_png, threshold):
    result = session.run(photo_or_png, "cat", threshold)
    assert not result.ok and "Score threshold" in result.message and "from 0 to 1" in result.message


@pytest.fixture
def photo_or_png(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    return str(path)


def test_slider_passes_a_typed_minus_three_to_the_session(session):
    import gradio as gr

    from denseclip.web_demo.app import build_app

    app = build_app(session)
    [slider] = [block for block in app.blocks.values() if isinstance(block, gr.Slider)]
    assert slider.preprocess(-3) == -3 and slider.preprocess(0.5) == 0.5  # Gradio would raise on -3


def test_port_out_of_range_is_a_usage_error(capsys):
    from denseclip.web_demo.app import get_parser

    err = exit_error(capsys, lambda: get_parser().parse_args(["--config-file", "x.yaml", "--port", "99999"]))
    assert "'99999' is not a TCP port: give a number from 1 to 65535" in err and "OverflowError" not in err


def test_port_in_use_fails_before_the_model_and_before_the_url(monkeypatch, caplog):
    from denseclip.demo_cli import DemoError
    from denseclip.web_demo import app as web_app

    monkeypatch.setattr(web_app, "create_session", lambda args: pytest.fail("the model must not be built"))
    args = web_app.get_parser().parse_args(["--config-file", "x.yaml"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        args.port = busy.getsockname()[1]
        with caplog.at_level(logging.INFO), pytest.raises(DemoError, match=rf"port {args.port} on 127.0.0.1 is in use"):
            web_app.serve(args)
    assert not any("web demo on" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- converter
def convert_main(argv):
    import convert_reference_checkpoint

    return convert_reference_checkpoint.main([str(a) for a in argv])


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    (b"", "is empty (0 bytes)"),
    (b"<html>not found</html>" + bytes(range(256)) * 12, "not a PyTorch checkpoint"),
    ("truncated", "truncated or corrupt"),
])
def test_unreadable_reference_checkpoints_are_one_line_errors(capsys, tmp_path, content, reason):
    source = tmp_path / "reference.pth"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "meta": {}}, source)
        source.write_bytes(source.read_bytes()[:2000])
    elif content is not None:
        source.write_bytes(content)
    err = exit_error(capsys, lambda: convert_main([source, tmp_path / "out.pth"]))
    assert_one_line_error(err, "convert_reference_checkpoint.py", str(source), reason)
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty (0 bytes)"),
    (b"<html>not found</html>", "not a PyTorch checkpoint"),
    ("truncated", "truncated or corrupt"),
])
def test_unreadable_model_weights_are_named(tmp_path, content, reason):
    """MODEL.WEIGHTS of an interrupted download: EOFError, UnpicklingError ("Python objects") or
    PytorchStreamReader tracebacks before."""
    from denseclip.engine import AtomicDetectionCheckpointer, IncompatibleCheckpointError

    path = tmp_path / "model_final.pth"
    if content == "truncated":
        torch.save({"model": {"weight": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(IncompatibleCheckpointError, match=rf"cannot read .{re.escape(str(path))}.: .*{re.escape(reason)}"):
        AtomicDetectionCheckpointer(torch.nn.Linear(2, 2)).load(str(path))


def test_paper_config_of_a_reference_layout():
    from denseclip.reference_checkpoint import ReferenceLayout
    from denseclip.reference_checkpoint_files import paper_config_file

    r101 = {f"backbone.layer3.{i}.conv1.weight": None for i in range(23)}
    assert paper_config_file(ReferenceLayout("mask_rcnn", True), r101) == "COCO/mask_rcnn_denseclip_R101_FPN_1x.yaml"
    assert paper_config_file(ReferenceLayout("semantic_fpn", True, vit=True), {}) == \
        "ADE20K/semantic_fpn_denseclip_ViT-B-16_640x640_80k.yaml"
    for name in ("COCO/mask_rcnn_denseclip_R101_FPN_1x.yaml", "ADE20K/semantic_fpn_denseclip_ViT-B-16_640x640_80k.yaml"):
        assert (REPO_ROOT / "configs" / name).is_file()


# ---------------------------------------------------------------------------------------- segmentation data
def write_folder(root, labels, image_names=None):
    images, label_dir = root / "images", root / "labels"
    images.mkdir(parents=True)
    label_dir.mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(label).save(label_dir / f"img{i}.png")
        for name in image_names or [f"img{i}.jpg"]:
            if name.startswith(f"img{i}."):
                Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(images / name)
    (root / "classes.txt").write_text("wall\nsky\n")
    return images, label_dir


def test_all_ignored_labels_are_refused(tmp_path):
    from denseclip.data.sem_seg_folder import validate_sem_seg_folder

    images, labels = write_folder(tmp_path, [np.full((8, 8), 255, np.uint8)] * 2)
    with pytest.raises(ValueError, match=r"Every pixel of the 2 label PNG\(s\) in .* is 255 \(= ignore\)"):
        validate_sem_seg_folder(images, labels, 2)


def test_two_images_for_one_label_are_named(tmp_path):
    from denseclip.data.sem_seg_folder import validate_sem_seg_folder

    label = np.zeros((8, 8), np.uint8)
    images, labels = write_folder(tmp_path, [label, label], image_names=["img0.jpg", "img0.png", "img1.jpg"])
    with pytest.raises(ValueError, match=r"img0\.png <- img0\.jpg and img0\.png"):
        validate_sem_seg_folder(images, labels, 2)


def test_segmentation_label_errors_are_one_line_in_train_net(tmp_path):
    images, labels = write_folder(tmp_path, [np.full((8, 8), 255, np.uint8)])
    spec = f"own_all_ignored=sem_seg:{images}:{labels}:{tmp_path / 'classes.txt'}"
    proc = run_script([REPO_ROOT / "train_net.py", "--config-file", REPO_ROOT / "configs" / "Synthetic" /
                       "semantic_fpn_denseclip_RN-tiny_shapes.yaml", "--dataset", spec, "OUTPUT_DIR", tmp_path / "out",
                       "DATASETS.TRAIN", "('own_all_ignored',)", "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"])
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train_net.py", "is 255 (= ignore)", str(labels))
    assert "FutureWarning" not in proc.stderr
    assert not (tmp_path / "out" / "log.txt").exists()


# ---------------------------------------------------------------------------------------- --eval-only
def test_eval_only_gets_a_folder_of_its_own(tmp_path):
    from denseclip.engine import default_argument_parser, redirect_evaluation_output

    config = str(REPO_ROOT / "configs" / SYNTHETIC)
    parse = default_argument_parser().parse_args
    args = parse(["--config-file", config, "--eval-only", "MODEL.WEIGHTS", "run/model_final.pth", "OUTPUT_DIR", str(tmp_path)])
    folder = redirect_evaluation_output(args)
    assert folder == str(tmp_path / "eval" / "model_final") and args.training_output_dir == str(tmp_path)
    assert args.opts[-2:] == ["OUTPUT_DIR", folder]
    os.makedirs(folder)  # a second evaluation of the same weights: a new folder
    again = parse(["--config-file", config, "--eval-only", "MODEL.WEIGHTS", "model_final.pth", "OUTPUT_DIR", str(tmp_path)])
    assert redirect_evaluation_output(again) == folder + "-2"
    export = parse(["--config-file", config, "--eval-only", "--onnx", "export/mask_rcnn/", "OUTPUT_DIR", str(tmp_path)])
    assert redirect_evaluation_output(export) == str(tmp_path / "eval" / "onnx_mask_rcnn")


# ---------------------------------------------------------------------------------------- export
def export_main(argv):
    import export_model

    return export_model.main([str(a) for a in argv])


def test_export_output_that_is_a_file_or_unwritable(capsys, tmp_path):
    config = REPO_ROOT / "configs" / SYNTHETIC
    existing = tmp_path / "export.onnx"
    existing.write_text("x")
    err = exit_error(capsys, lambda: export_main(["--config-file", config, "--output", existing]))
    assert_one_line_error(err, "export_model.py", f"--output '{existing}' is a file: give a folder")
    under_a_file = existing / "sub"
    err = exit_error(capsys, lambda: export_main(["--config-file", config, "--output", under_a_file]))
    assert_one_line_error(err, "export_model.py", f"--output '{under_a_file}' cannot be written (Not a directory)")
    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        err = exit_error(capsys, lambda: export_main(["--config-file", config, "--output", read_only]))
        assert_one_line_error(err, "export_model.py", "cannot be written (Permission denied)")


def test_corrupt_sample_image_is_found_before_anything_is_written(capsys, tmp_path):
    image = tmp_path / "sample.jpg"
    image.write_bytes(b"\xff\xd8\xff" + os.urandom(200))
    output = tmp_path / "export"
    err = exit_error(capsys, lambda: export_main(["--config-file", REPO_ROOT / "configs" / SYNTHETIC, "--output", output,
                                                  "--sample-image", image]))
    assert_one_line_error(err, "export_model.py", f"--sample-image '{image}' cannot be used")
    assert not output.exists()


def test_onnx_folder_missing_or_incomplete_is_named(tmp_path):
    from denseclip.deploy.runner import MANIFEST, read_manifest

    missing = tmp_path / "no_export"
    with pytest.raises(FileNotFoundError, match=rf"'{missing}': no such export folder"):
        read_manifest(str(missing))
    folder = tmp_path / "export"
    folder.mkdir()
    graphs = {name: {"file": f"{name}.onnx"} for name in ("model", "box_head", "mask_head")}
    (folder / MANIFEST).write_text(json.dumps({"graphs": graphs}))
    for name in ("model", "box_head"):
        (folder / f"{name}.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"is incomplete: mask_head\.onnx missing"):
        read_manifest(str(folder))


def test_demo_onnx_on_a_missing_folder_names_it(capsys, tmp_path, photo_or_png):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    missing = tmp_path / "no_export"
    assert demo.main(["--onnx", str(missing), "--input", photo_or_png, "--output", str(tmp_path / "out")]) == 2
    assert f"'{missing}': no such export folder" in capsys.readouterr().err


def test_train_net_onnx_checks_come_before_anything_is_written(tmp_path):
    missing = tmp_path / "no_export"
    config = REPO_ROOT / "configs" / SYNTHETIC
    proc = run_script([REPO_ROOT / "train_net.py", "--config-file", config, "--eval-only", "--onnx", missing,
                       "OUTPUT_DIR", tmp_path / "out"])
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train_net.py", f"--onnx '{missing}': no such export folder")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- noise
def test_help_prints_no_future_warning():
    proc = run_script([REPO_ROOT / "train_net.py", "--help"])
    assert proc.returncode == 0 and "FutureWarning" not in proc.stderr and "torch.jit.script" not in proc.stderr


def test_cpu_flag_does_not_report_a_cuda_fallback(caplog):
    from denseclip.demo_cli import setup_cfg

    args = argparse.Namespace(config_file=str(REPO_ROOT / "configs" / SYNTHETIC), opts=["MODEL.DEVICE", "cuda"], cpu=True,
                              confidence_threshold=0.5)
    with caplog.at_level(logging.INFO):
        cfg = setup_cfg(args)
    assert cfg.MODEL.DEVICE == "cpu"
    assert not any("CUDA is not available" in r.getMessage() for r in caplog.records)


def test_config_dump_in_the_log_has_no_colour_codes():
    from denseclip.engine.run_output import PLAIN_TEXT_LOGS

    record = logging.LogRecord("detectron2", logging.INFO, __file__, 1, "config:\n\x1b[38;5;197mMODEL\x1b[39m:", None, None)
    assert PLAIN_TEXT_LOGS.filter(record) and record.getMessage() == "config:\nMODEL:"


def test_random_clip_is_reported_only_without_model_weights(caplog):
    from denseclip.backbone.build import create_clip_from_config

    for weights, reported in (("", True), ("output/model_final.pth", False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="denseclip"):
            create_clip_from_config(load_config(SYNTHETIC, TINY + ["MODEL.WEIGHTS", weights]))
        infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert any("CLIP RN-tiny: random initialisation" in m for m in infos) == reported, (weights, infos)
