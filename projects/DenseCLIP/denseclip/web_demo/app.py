"""The web demo's page (Gradio) and its command line, ``python demo.py --web``: upload an image (or
take one with the webcam, or pick a generated example), type a vocabulary or pick a preset, and see
the Visualizer's drawing, the table of detections and the time taken.

Local only: the server listens on --host (127.0.0.1 by default), Gradio's telemetry and version
check are off, no share link is made, the page uses system fonts (nothing is fetched from the
internet). Requests are served one at a time: the vocabulary is the model's state.
"""
from __future__ import annotations

import argparse
import errno
import glob
import logging
import os
import socket
import tempfile
from typing import List, Optional, Sequence

import gradio as gr
import pandas as pd  # a Gradio dependency: the table's value

from ..demo_cli import DemoError, setup_cfg
from ..predictor import VOCABULARY_PRESETS, DenseCLIPPredictor
from .session import (
    DRAW_DETECTIONS,
    DRAWINGS,
    HIGHEST_SCORE_MAP,
    TABLE_HEADERS,
    WebDemoSession,
)

logger = logging.getLogger(__name__)

__all__ = ["build_app", "create_session", "example_images", "get_parser", "launch", "serve"]

# Detections under this score are dropped by the model itself; the slider filters above it.
MODEL_SCORE_FLOOR = 0.05
NO_IMAGE_MESSAGE = "Upload an image, take one with the webcam or pick an example."
# System fonts only: Gradio's default theme would load its fonts from the internet.
_THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_THEME_MONO = ["ui-monospace", "monospace"]


def _pass_undecodable_uploads(image: gr.Image) -> gr.Image:
    """Let uploads that Gradio's preprocessing cannot open reach the handler as their file path, so
    that the page says what is wrong with the file (WebDemoSession.read_image) instead of a bare
    "Error". Wraps this one component's method: a subclass of a Gradio component would make Gradio
    write a .pyi stub next to this file."""
    preprocess = image.preprocess

    def tolerant_preprocess(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001 - WebDemoSession.read_image gives the reason
            if payload is None or payload.path is None:
                raise
            return str(payload.path)

    image.preprocess = tolerant_preprocess
    return image


def _pass_unusable_thresholds(slider: gr.Slider) -> gr.Slider:
    """Let a score threshold that Gradio's slider refuses (a typed -3, text: "Could not preprocess
    input component ... TypeError") reach the handler as given, so that the page says which values
    are allowed (WebDemoSession.check_threshold). Wraps this one component's method, as above."""
    preprocess = slider.preprocess

    def tolerant_preprocess(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001 - WebDemoSession.check_threshold gives the reason
            return payload

    slider.preprocess = tolerant_preprocess
    return slider


def example_images(folder: str, count: int = 3, size: int = 384) -> List[str]:
    """``count`` scenes of the project's synthetic-shapes generator (generated once into ``folder``)."""
    from ..data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(folder, num_train=1, num_val=count, image_size=size, seed=22)
    return sorted(glob.glob(os.path.join(paths["val_image_root"], "*.jpg")))[:count]


def _table(rows: Sequence[Sequence]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=TABLE_HEADERS)


def build_app(session: WebDemoSession, examples: Sequence[str] = (), vocabulary: Optional[str] = None,
              threshold: float = 0.5, title: str = "DenseCLIP") -> gr.Blocks:
    """The page for ``session``; ``vocabulary`` fills the vocabulary box (default: the model's
    classes), ``threshold`` the score slider."""
    fixed = session.vocabulary_is_fixed
    initial_vocabulary = ", ".join(session.class_names) if fixed or not vocabulary else vocabulary
    cfg = session.predictor.cfg

    def detect(image_path, vocabulary_text, score, drawing, score_map_class):
        if not image_path:
            return None, _table([]), NO_IMAGE_MESSAGE, gr.Dropdown()
        result = session.run(image_path, vocabulary_text, score, drawing, score_map_class)
        choices = [HIGHEST_SCORE_MAP, *result.score_map_classes]
        chosen = score_map_class if score_map_class in choices else HIGHEST_SCORE_MAP
        return result.drawing, _table(result.detections), result.message, gr.Dropdown(choices=choices, value=chosen)

    with gr.Blocks(title=f"{title} web demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## {title}: open-vocabulary detection and segmentation\n"
            f"Config `{os.path.basename(session.config_file) or 'given in Python'}` · weights "
            f"`{os.path.basename(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else 'none (random: predictions are meaningless)'}` · "
            f"device `{cfg.MODEL.DEVICE}`"
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = _pass_undecodable_uploads(gr.Image(label="Image", type="filepath", elem_id="input-image",
                                                           sources=["upload", "webcam", "clipboard"]))
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[image], label="Examples (synthetic shapes)")
                vocabulary_box = gr.Textbox(
                    label="Vocabulary", value=initial_vocabulary, lines=2, interactive=not fixed, elem_id="vocabulary",
                    info=session.fixed_vocabulary_note if fixed else
                    "Class names separated by commas or line breaks (Enter starts a new line), or exactly the "
                    "name of a preset. Shift+Enter or Detect applies it; the text is encoded once per vocabulary.",
                )
                preset_buttons = []
                with gr.Row(visible=not fixed):
                    for name, (description, _) in VOCABULARY_PRESETS.items():
                        preset_buttons.append((name, gr.Button(name, size="sm", min_width=60)))
                score = _pass_unusable_thresholds(gr.Slider(
                    MODEL_SCORE_FLOOR, 1.0, value=max(threshold, MODEL_SCORE_FLOOR), step=0.01,
                    label="Score threshold", info="detections, and score-map pixels of the semantic map"))
                drawing = gr.Radio(list(DRAWINGS), value=DRAW_DETECTIONS, label="Drawing")
                # Its choices follow the image; the session checks the value (the API may send any).
                score_map_class = gr.Dropdown([HIGHEST_SCORE_MAP], value=HIGHEST_SCORE_MAP, label="Score map of",
                                              allow_custom_value=True, info="the classes with the highest peak score")
                run = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column(scale=1):
                result = gr.Image(label="Result", type="numpy", format="png", interactive=False, elem_id="result")
                status = gr.Markdown(NO_IMAGE_MESSAGE, elem_id="status")
                table = gr.Dataframe(value=_table([]), headers=TABLE_HEADERS, interactive=False, label="Detections",
                                     elem_id="detections")

        inputs = [image, vocabulary_box, score, drawing, score_map_class]
        outputs = [result, table, status, score_map_class]
        shared = dict(fn=detect, inputs=inputs, outputs=outputs, concurrency_limit=1, concurrency_id="model")
        run.click(api_name="detect", **shared)
        image.change(api_name=False, **shared)
        vocabulary_box.submit(api_name=False, **shared)
        score.release(api_name=False, **shared)
        drawing.input(api_name=False, **shared)
        score_map_class.input(api_name=False, **shared)
        for name, button in preset_buttons:
            button.click(lambda n=name: n, outputs=vocabulary_box, api_name=False).then(api_name=False, **shared)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = None, allowed_paths: Sequence[str] = (),
           block: bool = True) -> str:
    """Serve ``app`` on ``host``:``port`` (local only: no share link, no telemetry); returns its URL.
    With ``block=False`` the server runs in a thread (tests) until ``app.close()``."""
    # Blocks(analytics_enabled=False) covers the app; Gradio's module-level telemetry reads this
    # variable at each call.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    theme = gr.themes.Default(font=_THEME_FONTS, font_mono=_THEME_MONO)
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
        prevent_thread_lock=not block, allowed_paths=list(allowed_paths), theme=theme, quiet=not block,
        footer_links=["api", "settings"], max_file_size="200mb", ssr_mode=False, mcp_server=False, pwa=False,
    )
    return url


# ------------------------------------------------------------------------------------ command line
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a TCP port: give a number from 1 to 65535 (e.g. 7860)")
    return port


def check_port_free(host: str, port: int) -> None:
    """Raise DemoError when ``host``:``port`` cannot be listened on (in use, not an address of this
    machine, a privileged port): found before the model is built and before the page's URL is logged."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except socket.gaierror as e:
        raise DemoError(f"--host '{host}' is not an address of this machine ({e.strerror}): give e.g. 127.0.0.1") from e
    except OSError as e:
        why = "is in use (another web demo or program listens on it)" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror})"
        raise DemoError(f"port {port} on {host} {why}: give another --port, e.g. --port {port + 1 if port < 65535 else 7860}") from e


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demo.py --web", description="DenseCLIP web demo: a local Gradio page (upload or webcam, vocabulary, "
        "score threshold; detections, masks, semantic and score maps).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the local network too)")
    parser.add_argument("--port", type=_port, default=7860, help="port to listen on (1-65535)")
    parser.add_argument("--vocabulary", default=None, help="initial vocabulary (names or a preset); default: the model's classes")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="initial score threshold of the slider")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (MODEL.DEVICE cpu)")
    parser.add_argument("--max-image-pixels", type=int, default=50_000_000, help="larger uploads are refused")
    parser.add_argument("--max-side", type=int, default=2048, help="larger images are scaled down to this longest side")
    parser.add_argument("--examples-dir", default=os.path.join(tempfile.gettempdir(), "denseclip_web_demo_examples"),
                        help="where the example images are generated (once)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def create_session(args: argparse.Namespace) -> WebDemoSession:
    """The model of parsed ``get_parser()`` arguments, built once for all requests."""
    model_args = argparse.Namespace(config_file=args.config_file, opts=args.opts, cpu=args.cpu,
                                    confidence_threshold=MODEL_SCORE_FLOOR)
    predictor = DenseCLIPPredictor(setup_cfg(model_args), vocabulary=args.vocabulary)
    return WebDemoSession(predictor, max_image_pixels=args.max_image_pixels, max_side=args.max_side,
                          config_file=args.config_file)


def serve(args: argparse.Namespace) -> int:
    """Build the model of parsed ``get_parser()`` arguments and serve the page until Ctrl+C. The
    page's URL is logged once the server listens."""
    check_port_free(args.host, args.port)
    session = create_session(args)
    examples = example_images(args.examples_dir)
    app = build_app(session, examples, vocabulary=args.vocabulary, threshold=args.confidence_threshold)
    try:
        url = launch(app, args.host, args.port, allowed_paths=[args.examples_dir], block=False)
    except OSError as e:  # Gradio's "Cannot find empty port in range: ...": taken since the check
        raise DemoError(f"cannot serve on {args.host}:{args.port} ({e}); give another --port or --host") from e
    logger.info("DenseCLIP web demo on %s (Ctrl+C stops it)", url)
    app.block_thread()
    return 0
