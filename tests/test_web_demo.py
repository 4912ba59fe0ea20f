"""The web demo (demo.py --web): the request logic (vocabulary encoded once, bad input as messages,
drawings), the Gradio app served on 127.0.0.1 and called with gradio_client on a real COCO photo,
and the page driven in headless Chromium. Tiny synthetic model with random weights."""
import os
import socket
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config
from PIL import Image

SYNTHETIC = "Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml"
PAPER_HEADS = "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"
TINY = ["MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "192", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "5"]
VOCABULARY = "cat, remote control, sofa"
MAX_PIXELS = 2_000_000  # the served app's limit: far above a COCO photo, below the "huge" test image
THRESHOLD = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module")
def outbound():
    """Network destinations other than this machine that the process looks up or connects to."""
    seen = []
    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect

    def recording_getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            seen.append(host)
        return getaddrinfo(host, *args, **kwargs)

    def recording_connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            seen.append(address)
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
        patch.setattr(socket.socket, "connect", recording_connect)
        yield seen


@pytest.fixture(scope="module")
def served(tmp_path_factory, outbound):
    """The app of ``demo.py --web`` (its argument parser and model building) served on 127.0.0.1."""
    from denseclip.web_demo.app import build_app, create_session, example_images, get_parser, launch

    examples_dir = str(tmp_path_factory.mktemp("examples"))
    args = get_parser().parse_args([
        "--config-file", str(REPO_ROOT / "configs" / SYNTHETIC), "--cpu", "--vocabulary", VOCABULARY,
        "--max-image-pixels", str(MAX_PIXELS), "--examples-dir", examples_dir,
        "--opts", "MODEL.CLIP.PRETRAINED", "", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "5",
    ])
    torch.manual_seed(0)  # the random weights (module fixtures run before the per-test seeding)
    session = create_session(args)
    examples = example_images(examples_dir)
    app = build_app(session, examples, vocabulary=args.vocabulary, threshold=THRESHOLD)
    url = launch(app, "127.0.0.1", free_port(), allowed_paths=[examples_dir], block=False)
    yield url, session, examples
    app.close()


@pytest.fixture
def photo(tiny_coco_root):
    return sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]


def write_png(path, array) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def read_bgr(path):
    from detectron2.data.detection_utils import read_image

    return read_image(str(path), format="BGR")


def predictor_rows(predictor, path, threshold):
    instances = predictor(read_bgr(path))["instances"]
    instances = instances[instances.scores >= threshold]
    names = predictor.class_names
    return [[names[c], s, *b] for c, s, b in zip(instances.pred_classes.tolist(), instances.scores.tolist(),
                                                  instances.pred_boxes.tensor.tolist())]


def assert_same_detections(table_rows, reference_rows, some=True):
    assert len(table_rows) == len(reference_rows) and (len(reference_rows) > 0 or not some)
    for got, want in zip(table_rows, reference_rows):
        assert got[0] == want[0]
        np.testing.assert_allclose([float(v) for v in got[1:]], want[1:], atol=0.051)  # rounded on the page


def test_gradio_client_gets_the_predictors_detections(served, outbound, photo, tmp_path):
    from gradio_client import Client, handle_file

    url, session, examples = served
    client = Client(url, verbose=False)
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/detect"]

    def detect(image, vocabulary=VOCABULARY, drawing="detections + masks", score_map_class="(highest peak)", threshold=THRESHOLD):
        return client.predict(handle_file(str(image)), vocabulary, threshold, drawing, score_map_class, api_name="/detect")

    drawing, table, message, _ = detect(photo)
    assert table["headers"] == ["class", "score", "x0", "y0", "x1", "y1"]
    assert_same_detections(table["data"], predictor_rows(session.predictor, photo, THRESHOLD))
    assert session.class_names == ["cat", "remote control", "sofa"]
    assert Image.open(drawing).size == Image.open(photo).size  # drawn on the photo, at its size
    assert "detection(s)" in message and "Vocabulary (3 classes)" in message

    # A preset, and the heat map of a chosen class (offered highest peak first).
    drawing, table, message, dropdown = detect(photo, "voc", "score map (heat map)", "sofa", threshold=0.05)
    assert session.class_names[-1] == "tv monitor" and "Vocabulary (20 classes" in message
    assert dropdown["value"] == "sofa" and len(dropdown["choices"]) == 1 + 16
    # 20 classes share the random model's softmax: scores are low, possibly none above the floor.
    assert_same_detections(table["data"], predictor_rows(session.predictor, photo, 0.05), some=False)

    # Bad input: a message on the page, and the server goes on serving.
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    huge = tmp_path / "huge.png"
    Image.new("L", (2000, 1500)).save(huge)
    for image, vocabulary, expected in [
        (notes, VOCABULARY, "'notes.jpg' cannot be read as an image: not a recognised image format"),
        (huge, VOCABULARY, f"too large: 2000 x 1500 = 3,000,000 pixels; this demo takes at most {MAX_PIXELS:,}"),
        (photo, " , ", "Vocabulary: the vocabulary ' , ' contains no class name"),
        (photo, "cat, sofa, Cat", "Vocabulary: duplicate class names"),
    ]:
        drawing, table, message, _ = detect(image, vocabulary)
        assert drawing is None and table["data"] == [] and message.startswith("**Error:**") and expected in message
    assert session.class_names[-1] == "tv monitor"  # a refused vocabulary changes nothing
    _, table, _, _ = detect(examples[0], VOCABULARY)
    assert_same_detections(table["data"], predictor_rows(session.predictor, examples[0], THRESHOLD))
    assert outbound == []  # local only: no telemetry, version check, share link or hub call
    assert not list((REPO_ROOT / "projects").rglob("*.pyi"))  # Gradio writes stubs for component subclasses


def test_text_is_encoded_once_per_vocabulary_and_drawings(photo, tmp_path):
    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession

    session = WebDemoSession(DenseCLIPPredictor(load_config(SYNTHETIC, TINY), vocabulary=VOCABULARY), max_side=400)
    encoder_calls, model_calls = [], []
    session.predictor.model.text_side.prompt_encoder.register_forward_hook(lambda *a: encoder_calls.append(1))
    session.predictor.model.register_forward_hook(lambda *a: model_calls.append(1))

    first = session.run(str(photo), VOCABULARY, THRESHOLD)
    assert first.ok and len(encoder_calls) == 1 and len(model_calls) == 1
    # Slider and drawing changes reuse the predictions; the same vocabulary reuses the text.
    for threshold, drawing in [(0.5, "detections + masks"), (THRESHOLD, "semantic map"), (0.0, "score map (heat map)")]:
        result = session.run(str(photo), " cat,remote control , sofa", threshold, drawing)
        assert result.ok and result.drawing.shape == first.drawing.shape and "not recomputed" in result.message
    assert len(encoder_calls) == 1 and len(model_calls) == 1
    scores = sorted({row[1] for row in first.detections})  # rounded to 0.001 on the page
    assert len(scores) > 1
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # the slider filters the same predictions
    assert session.run(str(photo), VOCABULARY, middle).detections == [r for r in first.detections if r[1] >= middle]
    session.run(str(photo), VOCABULARY, THRESHOLD, "score map (heat map)", "sofa")
    assert len(encoder_calls) == 1 and len(model_calls) == 1

    other = write_png(tmp_path / "wide.png", np.zeros((300, 1000, 3), np.uint8))  # another image, wider than max_side
    result = session.run(other, VOCABULARY, THRESHOLD, "semantic map")
    assert result.drawing.shape == (120, 400, 3) and "scaled down from 1000 x 300 to 400 x 120" in result.message
    assert len(encoder_calls) == 1 and len(model_calls) == 2  # new image, same text
    assert "text encoded anew" not in result.message

    changed = session.run(str(photo), "cat, dog", THRESHOLD)
    assert changed.ok and "text encoded anew" in changed.message and session.class_names == ["cat", "dog"]
    session.run(str(photo), "cat,dog", 0.3)
    session.run(other, "cat,dog", 0.3)
    assert len(encoder_calls) == 2  # encoded once for the new vocabulary
    session.run(str(photo), VOCABULARY, THRESHOLD)
    assert len(encoder_calls) == 3

    heat = session.run(str(photo), VOCABULARY, THRESHOLD, "score map (heat map)", "dog")
    assert not heat.ok and "no score map of 'dog'" in heat.message
    assert not session.run(None, VOCABULARY, THRESHOLD).ok

    # Score maps of all classes over the memory budget: computed on a smaller copy, resized back;
    # the detections still come from the full image.
    full_maps, names = session.predictor.score_maps(session.read_image(str(photo))[0], max_classes=3)
    session.score_map_bytes = full_maps.nbytes // 4
    session._last, calls = None, len(model_calls)
    small = session.run(str(photo), VOCABULARY, THRESHOLD, "score map (heat map)")
    assert len(model_calls) == calls + 2  # the full image for the detections, a half-size copy for the maps
    assert small.detections == first.detections and small.score_map_classes == names
    assert session._last.maps.shape == full_maps.shape
    assert np.abs(session._last.maps - full_maps).mean() < 0.02  # smooth maps: close to the full-size ones


def test_fixed_classes_disable_the_vocabulary_box(tmp_path):
    import gradio as gr

    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession
    from denseclip.web_demo.app import build_app

    session = WebDemoSession(DenseCLIPPredictor(load_config(PAPER_HEADS, TINY)))
    assert session.vocabulary_is_fixed and len(session.class_names) == 80
    app = build_app(session, vocabulary="cat, dog")
    box = next(b for b in app.blocks.values() if isinstance(b, gr.Textbox) and b.elem_id == "vocabulary")
    assert box.interactive is False and box.value.startswith("person, bicycle")
    assert "fixed set of 80 classes" in box.info
    grey = write_png(tmp_path / "grey.png", np.full((64, 96, 3), 90, np.uint8))
    result = session.run(grey, "cat, dog", THRESHOLD)
    assert result.ok and len(session.class_names) == 80  # the box's text is not a vocabulary here

    # A model whose outputs carry no score maps: served without them.
    session.predictor.model.add_score_maps = lambda results, *args: results
    session._last = None
    assert session.run(grey, "", THRESHOLD).ok
    heat = session.run(grey, "", THRESHOLD, "score map (heat map)")
    assert not heat.ok and "returns no pixel-text score maps" in heat.message and not session.has_score_maps
    with pytest.raises(ValueError, match="fixed set of 80 classes"):
        session.set_vocabulary("cat, dog")


def test_browser_shows_a_result_after_uploading_a_photo(served, photo, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from headless_chromium import BrowserError, HeadlessChromium, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    url, _, _ = served
    try:
        browser = HeadlessChromium(timeout=60)
    except BrowserError as e:
        if os.environ.get("CI"):  # .ci/run installed it: it must run there
            raise
        pytest.skip(f"Chromium cannot start here: {e}")
    with browser:
        browser.navigate(url)
        browser.wait_for("document.querySelector('#input-image input[type=file]') !== null")
        assert browser.evaluate("document.querySelector('#result img')") is None
        browser.set_input_files("#input-image input[type=file]", [str(photo)])
        size = browser.wait_for("(() => { const i = document.querySelector('#result img');"
                                " return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null })()")
        assert tuple(size) == Image.open(photo).size
        status = browser.wait_for("document.querySelector('#status').innerText.includes('detection(s)')"
                                  " && document.querySelector('#status').innerText")
        assert "Vocabulary" in status and "Error" not in status
        assert browser.screenshot(str(tmp_path / "page.png"))[0] > 0


def run_demo_script(argv):
    """demo.py's main() in this process: its exit code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


def test_demo_script_dispatches_web(monkeypatch, capsys):
    import denseclip.web_demo.app as web_app

    served_args = []
    monkeypatch.setattr(web_app, "serve", lambda args: served_args.append(args) or 0)
    config = REPO_ROOT / "configs" / SYNTHETIC
    assert run_demo_script(["--config-file", config, "--web", "--port", "7999", "--opts", "MODEL.WEIGHTS", "--web"]) == 0
    (args,) = served_args
    assert (args.host, args.port, args.opts) == ("127.0.0.1", 7999, ["MODEL.WEIGHTS", "--web"])  # --web after --opts is a value
    with pytest.raises(SystemExit):
        run_demo_script(["--web", "--config-file", config, "--input", "a.jpg"])  # the web page takes no --input
    assert "unrecognized arguments: --input a.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_demo_script(["--help"])
    assert "python demo.py --web --config-file FILE" in " ".join(capsys.readouterr().out.split())


SEGMENTATION = "ADE20K/semantic_fpn_denseclip_language_R50_512x512_80k.yaml"


def test_segmentation_model_semantic_map_and_segments_table(photo):
    from denseclip.predictor import DenseCLIPPredictor
    from denseclip.web_demo import WebDemoSession

    cfg = load_config(SEGMENTATION, TINY + ["MODEL.DENSECLIP.CLASS_NAMES", ["wall", "floor", "sky"]])
    session = WebDemoSession(DenseCLIPPredictor(cfg))
    assert not session.vocabulary_is_fixed  # language-guided: the pixels are classified by the text
    result = session.run(str(photo), "wall, floor, person, sky", 0.0)
    assert result.ok and "class(es) segmented" in result.message and session.class_names[2] == "person"
    assert result.drawing.shape == (*Image.open(photo).size[::-1], 3)
    sem_seg = session._last.predictions["sem_seg"].softmax(dim=0)
    labels = sem_seg.argmax(dim=0).numpy()
    present = [session.class_names[i] for i in np.unique(labels)]
    assert sorted(row[0] for row in result.detections) == sorted(present)
    for name, score, x0, y0, x1, y1 in result.detections:  # mean probability and extent of its pixels
        ys, xs = np.nonzero(labels == session.class_names.index(name))
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert score == pytest.approx(sem_seg.max(dim=0).values.numpy()[ys, xs].mean(), abs=1e-3)
    for drawing in ("semantic map", "score map (heat map)"):
        assert session.run(str(photo), "wall, floor, person, sky", 0.0, drawing).drawing.shape == result.drawing.shape
