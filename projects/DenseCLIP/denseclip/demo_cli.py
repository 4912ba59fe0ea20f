"""The command line of ``demo.py`` (repository root), as Detectron2's demo/demo.py: detections (or
semantic segmentations, with a segmentation config) of images (files, folders, glob patterns), of a
video file or of the webcam, drawn with Detectron2's
visualizers, written under ``--output`` or shown in a window; an optional vocabulary (names or a
preset) and the pixel-text score maps of images.

    python demo.py --config-file configs/COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml \
        --input photos/ --output out/ --vocabulary "cat,remote control,sofa" --score-maps \
        --opts MODEL.WEIGHTS model_final.pth
    python demo.py --onnx export/mask_rcnn/ --input photos/ --output out/   # an export (tools/deploy)
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
from detectron2.config import CfgNode

from .config_building import build_config
from .data import register_datasets_from_config
from .demo_files import (
    VIDEO_EXTENSIONS,
    DemoError,
    expand_inputs,
    image_output_files,
    read_failure_reason,
    sanitize_file_name,
    score_map_names,
    video_output_file,
)
from .predictor import VOCABULARY_PRESETS, DenseCLIPPredictor, parse_vocabulary, truncated_names_message
from .visualization import VideoDrawer, draw_predictions, score_map_overlay

logger = logging.getLogger(__name__)

__all__ = [
    "DemoError",
    "DemoSummary",
    "expand_inputs",
    "get_parser",
    "opencv_has_gui",
    "run_demo",
    "sanitize_file_name",
    "setup_cfg",
]

WINDOW_NAME = "DenseCLIP demo"
ESC = 27
NO_GUI_MESSAGE = "no --output given and OpenCV has no GUI support (opencv-python-headless): give --output"


# ------------------------------------------------------------------------------------ arguments
def _vocabulary_arg(value: str) -> List[str]:
    try:
        return parse_vocabulary(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def get_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{name}: {description}" for name, (description, _) in VOCABULARY_PRESETS.items())
    parser = argparse.ArgumentParser(
        description="DenseCLIP demo: draw detections or semantic segmentations (and pixel-text score maps) of images, "
        "a video or the webcam.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", metavar="FILE", help="path to a config file (required unless --onnx)")
    parser.add_argument("--onnx", metavar="DIR",
                        help="run an export of tools/deploy/export_model.py (its folder; ONNX in ONNX Runtime, or "
                        "torch.export / TorchScript) instead of the PyTorch model; its config and vocabulary are the exported ones")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns (quoted)")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="the webcam (camera 0); ESC in the window quits")
    parser.add_argument(
        "--output",
        help="images: a folder (created if needed), or a file name with an image extension for a single image; "
        f"video and webcam: a video file ({', '.join(VIDEO_EXTENSIONS)}; mp4v codec) or a folder. "
        "Without it the results are shown in a window (any key: next image, ESC: quit)",
    )
    parser.add_argument(
        "--vocabulary", type=_vocabulary_arg, default=None,
        help='class names to detect, separated by commas or line breaks, e.g. "cat,remote control,sofa", or exactly the name of a preset '
        f"({presets}). A preset is chosen only by its exact name: a trailing comma (\"coco,\") makes a one-class "
        "list. Needs a language-guided config. Without it: the model's training vocabulary",
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a drawn detection (ROI heads and RetinaNet); --opts win over it")
    parser.add_argument("--score-maps", action="store_true",
                        help="images only: also draw <stem>_scoremap_<class>.jpg heat maps of the pixel-text score maps")
    parser.add_argument("--max-score-maps", type=int, default=10,
                        help="score maps of at most this many classes per image, highest maximum first (<= 0: all)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (MODEL.DEVICE cpu)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config file and --opts (``build_config``), the config's datasets registered (their class
    names may be the vocabulary), then --confidence-threshold where --opts set no threshold, then
    --cpu; frozen. The class names are resolved by the predictor (a --vocabulary may have to name
    them). A wrong key or value in --opts raises ``denseclip.engine.ConfigError`` naming the
    overrides as given, as train_net.py does."""
    # --cpu wins over --opts, and build_config then reports no CUDA fallback.
    device = "cpu" if getattr(args, "cpu", False) else None
    cfg = build_config(args.config_file, list(getattr(args, "opts", None) or []), device=device)
    register_datasets_from_config(cfg)
    cfg.merge_from_list(_threshold_opts(args))
    if cfg.MODEL.WEIGHTS and cfg.MODEL.CLIP.PRETRAINED:
        # MODEL.WEIGHTS holds the whole model, CLIP towers included: no need to fetch CLIP first.
        logger.info("MODEL.WEIGHTS given: MODEL.CLIP.PRETRAINED '%s' is not loaded", cfg.MODEL.CLIP.PRETRAINED)
        cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.freeze()
    return cfg


def _threshold_opts(args: argparse.Namespace) -> List:
    """--confidence-threshold as KEY VALUE overrides of the keys --opts does not set."""
    threshold = getattr(args, "confidence_threshold", None)
    if threshold is None:
        return []
    given = set(list(getattr(args, "opts", None) or [])[0::2])
    keys = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.RETINANET.SCORE_THRESH_TEST",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH")
    return [item for key in keys if key not in given for item in (key, threshold)]


# ------------------------------------------------------------------------------------ window
def opencv_has_gui() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot: "GUI: NONE")."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return not (match and match.group(1).upper() == "NONE")


def _show(image, wait_ms: int) -> bool:
    """Show ``image`` in the demo's window and wait ``wait_ms`` (0: for a key); False on ESC."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image)
        return cv2.waitKey(wait_ms) & 0xFF != ESC
    except cv2.error as e:  # e.g. a GUI build without a display
        raise DemoError(f"cannot show the results in a window ({e}); give --output") from e


# ------------------------------------------------------------------------------------ run
@dataclass
class DemoSummary:
    """What ``run_demo`` did: files written, inputs that failed (with the reason), images and video
    frames processed, the predictor."""

    written: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    num_images: int = 0
    num_frames: int = 0
    predictor: Optional[DenseCLIPPredictor] = None

    @property
    def exit_code(self) -> int:
        """0 when at least one image or frame was processed, 1 otherwise."""
        return 0 if self.num_images > 0 or self.num_frames > 0 else 1


def run_demo(args: argparse.Namespace) -> DemoSummary:
    """Run the demo for parsed ``get_parser()`` arguments; ``summary.exit_code`` for the shell.

    Raises ``DemoError`` (camera, video, window, --output that does not fit the inputs),
    ``denseclip.engine.ConfigError`` (config file or --opts) or ValueError (vocabulary, model).
    """
    vocabulary = parse_vocabulary(getattr(args, "vocabulary", None))
    video = bool(getattr(args, "video_input", None) or getattr(args, "webcam", False))
    if video and getattr(args, "score_maps", False):
        raise DemoError("--score-maps draws images (--input), not --video-input or --webcam")
    if args.output is None and not opencv_has_gui():
        raise DemoError(NO_GUI_MESSAGE)
    if getattr(args, "onnx", None):
        cfg = None  # the export's own config (ExportedPredictor)
    elif not args.config_file:
        raise DemoError("give --config-file (or --onnx with an export)")
    else:
        cfg = setup_cfg(args)
    if video:
        return _run_video(args, cfg, vocabulary)
    return _run_images(args, cfg, vocabulary)


def _build_predictor(args: argparse.Namespace, cfg: Optional[CfgNode], vocabulary: Optional[List[str]],
                     summary: DemoSummary) -> DenseCLIPPredictor:
    if getattr(args, "onnx", None):
        from .deploy import ExportedPredictor

        opts = list(getattr(args, "opts", None) or []) + _threshold_opts(args)
        predictor = ExportedPredictor(args.onnx, opts, vocabulary=vocabulary)
    else:
        predictor = DenseCLIPPredictor(cfg, vocabulary=vocabulary)
    summary.predictor = predictor
    logger.info("Vocabulary (%d classes): %s", len(predictor.class_names), predictor.class_names)
    truncated = getattr(predictor, "truncated_names", {})
    if truncated:
        print(f"Warning: {truncated_names_message(truncated)}", file=sys.stderr)
    return predictor


def _run_images(args: argparse.Namespace, cfg: Optional[CfgNode], vocabulary: Optional[List[str]]) -> DemoSummary:
    """Unreadable or missing inputs are reported (one log line each, naming the file and the
    reason) and skipped; the other images are still processed."""
    from detectron2.data.detection_utils import read_image
    from tqdm import tqdm

    summary = DemoSummary()
    paths, missing = expand_inputs(args.input)
    for spec, reason in missing:
        logger.warning("Skipping '%s': %s", spec, reason)
        summary.failed.append((spec, reason))
    verb = "shown in a window" if args.output is None else f"written to {args.output}"
    if not paths:
        logger.error("No input image to process (inputs: %s)", list(args.input))
        print(f"DenseCLIP demo: 0 image(s) {verb}, {len(summary.failed)} failed")
        return summary
    outputs = image_output_files(args.output, paths) if args.output is not None else [(None, "", "")] * len(paths)

    predictor = _build_predictor(args, cfg, vocabulary, summary)
    with_maps = bool(getattr(args, "score_maps", False))
    max_maps = getattr(args, "max_score_maps", 10)
    max_maps = max_maps if max_maps and max_maps > 0 else None

    for path, (folder, stem, extension) in tqdm(list(zip(paths, outputs)), desc="DenseCLIP demo", unit="image"):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped with its reason
            reason = read_failure_reason(path, e)
            logger.warning("Skipping '%s': %s", path, reason)
            summary.failed.append((path, reason))
            continue
        try:
            predictions, maps = predictor.predict(image, with_score_maps=with_maps, max_score_maps=max_maps)
            # file-name suffix -> drawing: the detections, then the score maps
            drawings = {"": draw_predictions(image, predictions, predictor.metadata)}
            if maps is not None:
                probabilities, names = maps
                for prob, name, file_part in zip(probabilities, names, score_map_names(names)):
                    drawings[f"_scoremap_{file_part}"] = score_map_overlay(image, prob, label=f"{name} (max {prob.max():.2f})")
            files = [os.path.join(folder, stem + suffix + extension) for suffix in drawings] if folder is not None else []
            if folder is not None:
                os.makedirs(folder, exist_ok=True)
                for file_name, drawn in zip(files, drawings.values()):
                    if not cv2.imwrite(file_name, drawn):
                        raise OSError(f"cv2.imwrite could not write '{file_name}'")
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge image
            logger.error("Failed on '%s': %s: %s", path, type(e).__name__, e)
            logger.debug("Traceback:", exc_info=True)
            summary.failed.append((path, f"{type(e).__name__}: {e}"))
            continue
        if "sem_seg" in predictions:
            found = f"{len(predictions['sem_seg'].argmax(dim=0).unique())} class(es) segmented"
        else:
            found = f"{len(predictions['instances']) if 'instances' in predictions else 0} detection(s)"
        logger.info("%s: %s%s", path, found, f" -> {files[0]}" if files else "")
        summary.written.extend(files)
        summary.num_images += 1
        if folder is None and not all(_show(drawn, 0) for drawn in drawings.values()):
            break  # ESC

    print(
        f"DenseCLIP demo: {summary.num_images} image(s) {verb}"
        f"{' (with score maps)' if with_maps else ''}, {len(summary.failed)} failed"
    )
    return summary


def _run_video(args: argparse.Namespace, cfg: Optional[CfgNode], vocabulary: Optional[List[str]]) -> DemoSummary:
    """Detections of each frame of --video-input or --webcam, drawn with Detectron2's
    VideoVisualizer, written to a video file or shown in a window (ESC quits)."""
    summary = DemoSummary()
    if args.webcam:
        source, source_name = 0, "webcam"
        capture = cv2.VideoCapture(0)
        if not capture.isOpened():
            raise DemoError("cannot open the webcam (camera 0): is a camera connected, and free?")
    else:
        source = source_name = args.video_input
        if not os.path.isfile(source):
            raise DemoError(f"--video-input '{source}': no such file")
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise DemoError(f"--video-input '{source}': OpenCV cannot read it as a video")
        source_name = os.path.splitext(os.path.basename(source))[0]
    writer = None
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        output_file = None
        if args.output is not None:
            output_file = video_output_file(args.output, source_name)
            writer = cv2.VideoWriter(output_file, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height), True)
            if not writer.isOpened():
                raise DemoError(f"cannot write the video '{output_file}' (OpenCV VideoWriter, mp4v codec)")
        predictor = _build_predictor(args, cfg, vocabulary, summary)
        drawer = VideoDrawer(predictor.metadata)
        logger.info("Reading %s (%dx%d, %.1f fps)", "the webcam" if args.webcam else source, width, height, fps)
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                drawn = drawer(frame, predictor(frame))
                summary.num_frames += 1
                if writer is not None:
                    writer.write(drawn)
                elif not _show(drawn, 1):
                    break
        except KeyboardInterrupt:  # the way to end a webcam run written to a file
            logger.info("Interrupted after %d frame(s)", summary.num_frames)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if output_file is not None and summary.num_frames:
        summary.written.append(output_file)
    print(f"DenseCLIP demo: {summary.num_frames} frame(s) {'shown in a window' if writer is None else f'written to {output_file}'}")
    return summary
