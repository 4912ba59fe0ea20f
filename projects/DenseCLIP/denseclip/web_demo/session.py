"""What the web demo does for one request, without the web: check and read the uploaded image,
keep the vocabulary (the model re-encodes the text only when it changes), run the predictor once
per image and vocabulary, and draw what was asked: the detections (boxes, masks), a semantic map, or
one class's pixel-text score map as a heat map. The Gradio page is :mod:`denseclip.web_demo.app`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from ..data.mapper import BadImageError, read_image_robust
from ..predictor import DenseCLIPPredictor, parse_vocabulary, truncated_names_message
from ..visualization import draw_predictions, score_map_overlay

logger = logging.getLogger(__name__)

__all__ = [
    "DRAW_DETECTIONS",
    "DRAW_SCORE_MAP",
    "DRAW_SEMANTIC",
    "DRAWINGS",
    "HIGHEST_SCORE_MAP",
    "TABLE_HEADERS",
    "WebDemoInputError",
    "WebDemoResult",
    "WebDemoSession",
]

DRAW_DETECTIONS = "detections + masks"
DRAW_SEMANTIC = "semantic map"
DRAW_SCORE_MAP = "score map (heat map)"
DRAWINGS = (DRAW_DETECTIONS, DRAW_SEMANTIC, DRAW_SCORE_MAP)
HIGHEST_SCORE_MAP = "(highest peak)"
TABLE_HEADERS = ["class", "score", "x0", "y0", "x1", "y1"]
NO_SCORE_MAPS = "this model returns no pixel-text score maps (a CLIP baseline has none): draw the detections"
IGNORE_LABEL = 255  # pixels of a semantic map whose best score is under the threshold: not drawn


class WebDemoInputError(ValueError):
    """A request the demo cannot serve (image, vocabulary, drawing); its message is shown on the page."""


@dataclass
class WebDemoResult:
    """One request's answer: the drawing (RGB uint8, None on error), the detections (for a
    segmentation model: the classes present, with their mean probability and extent) as rows of
    ``TABLE_HEADERS`` (boxes in original image pixels), the classes the heat map can show
    (highest peak first), and the message for the page (timings, or what was wrong)."""

    drawing: Optional[np.ndarray]
    detections: List[List] = field(default_factory=list)
    score_map_classes: List[str] = field(default_factory=list)
    message: str = ""
    ok: bool = True


@dataclass
class _Prediction:
    key: Tuple[str, Tuple[str, ...]]
    predictions: Dict
    maps: Optional[np.ndarray]  # K' x H x W probabilities of the classes below
    map_names: List[str]
    seconds: float


class WebDemoSession:
    """The predictor behind the page, shared by all requests (one at a time: the vocabulary is the
    model's state).

    Args:
        predictor: any DenseCLIP predictor (detector or segmentation model).
        max_image_pixels: larger uploads are refused with a message (decoding them alone could
            exhaust the memory).
        max_side: larger images are scaled down to this longest side before inference, so that
            drawings and score maps stay a few hundred MB at most.
        max_score_maps: score maps of at most this many classes, those with the highest peak
            (the semantic map of a detector is their argmax; the heat map offers them).
        score_map_bytes: the model returns the score maps of all K classes at the image's size
            (K x H x W float32); when they would take more memory than this (e.g. the 1203 LVIS
            classes: 1.5 GB at 640 x 480), they are computed on a copy of the image scaled down to
            fit, and the kept ones resized back (the detections still come from the full image).
        config_file: the model's config file, named on the page.
    """

    def __init__(self, predictor: DenseCLIPPredictor, *, max_image_pixels: int = 50_000_000, max_side: int = 2048,
                 max_score_maps: int = 16, score_map_bytes: int = 512 << 20, config_file: str = ""):
        self.predictor = predictor
        self.config_file = config_file
        self.max_image_pixels = int(max_image_pixels)
        self.max_side = int(max_side)
        self.max_score_maps = int(max_score_maps)
        self.score_map_bytes = int(score_map_bytes)
        self._lock = threading.Lock()
        self._last: Optional[_Prediction] = None
        self._outputs_score_maps = True

    # ------------------------------------------------------------------------------- the model
    @property
    def class_names(self) -> List[str]:
        return self.predictor.class_names

    @property
    def vocabulary_is_fixed(self) -> bool:
        """Whether the classes are fixed (stock heads: one learned weight vector per training class)."""
        return not getattr(self.predictor.model, "language_guided", False)

    @property
    def fixed_vocabulary_note(self) -> str:
        return (f"This model has a fixed set of {len(self.class_names)} classes (Detectron2's stock heads, "
                "one learned classifier per training class): the vocabulary cannot be changed. Models with the "
                "language-guided heads (configs named *_denseclip_language_*) take any vocabulary.")

    @property
    def has_score_maps(self) -> bool:
        """CLIP baselines have no text side, hence no pixel-text score maps; a model whose outputs
        turned out to carry none (it ignores ``return_score_maps``) is served without them."""
        return hasattr(self.predictor.model, "text_side") and self._outputs_score_maps

    def set_vocabulary(self, text: str) -> bool:
        """Use the vocabulary ``text`` (names separated by commas or line breaks, or a preset name); True when it
        changed. An unchanged vocabulary leaves the model alone, so its cached text embeddings
        are reused."""
        try:
            names = parse_vocabulary(text or "")
        except ValueError as e:
            raise WebDemoInputError(f"Vocabulary: {e}") from None
        if names == self.class_names:
            return False
        if self.vocabulary_is_fixed:
            raise WebDemoInputError(self.fixed_vocabulary_note)
        try:
            self.predictor.set_vocabulary(names)
        except ValueError as e:
            raise WebDemoInputError(f"Vocabulary: {e}") from None
        logger.info("Vocabulary changed to %d classes", len(names))
        return True

    # ------------------------------------------------------------------------------- the image
    def read_image(self, path: str) -> Tuple[np.ndarray, str, Tuple[int, int]]:
        """The BGR image of an uploaded file, a note ("" or how it was scaled down) and the
        uploaded image's (width, height). Files that are not images, or have more than
        ``max_image_pixels`` pixels, raise WebDemoInputError."""
        name = os.path.basename(str(path))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as header:  # reads the header only: the size before decoding
                    width, height = header.size
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            width = height = None
        except Exception:  # noqa: BLE001 - the full read below says what is wrong with the file
            width = height = 0
        if width is None or width * height > self.max_image_pixels:
            size = "more than PIL's decompression-bomb limit of" if width is None else f"{width} x {height} ="
            pixels = f"{Image.MAX_IMAGE_PIXELS:,}" if width is None else f"{width * height:,}"
            raise WebDemoInputError(
                f"The image '{name}' is too large: {size} {pixels} pixels; this demo takes at most "
                f"{self.max_image_pixels:,} pixels (--max-image-pixels). Scale it down and upload it again."
            )
        try:
            image = read_image_robust(str(path), format="BGR")
        except BadImageError as e:
            raise WebDemoInputError(f"'{name}' cannot be read as an image: {e.reason}") from None
        note = ""
        h, w = image.shape[:2]
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            note = (f"scaled down from {w} x {h} to {size[0]} x {size[1]} for the model (--max-side {self.max_side}); "
                    "the table's boxes are in the uploaded image's pixels")
        return np.ascontiguousarray(image), note, (w, h)

    @staticmethod
    def check_threshold(threshold: object) -> float:
        """The score threshold as a float in [0, 1]; anything else (the API or a typed value may
        send -3 or text) raises WebDemoInputError saying what is allowed."""
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value <= 1.0:  # also NaN
            raise WebDemoInputError(f"Score threshold {threshold!r} is not a score: give a number from 0 to 1 (e.g. 0.5)")
        return value

    # ------------------------------------------------------------------------------- a request
    def run(self, image_path: Optional[str], vocabulary: str, threshold: float, drawing: str = DRAW_DETECTIONS,
            score_map_class: str = HIGHEST_SCORE_MAP) -> WebDemoResult:
        """Serve one request; every problem with it becomes the result's message (nothing raises)."""
        with self._lock:
            try:
                return self._run(image_path, vocabulary, threshold, drawing, score_map_class)
            except WebDemoInputError as e:
                return WebDemoResult(None, message=f"**Error:** {e}", ok=False)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: the page says so, the server goes on
                logger.exception("Request failed")
                return WebDemoResult(None, message=f"**Error:** the model failed on this image ({type(e).__name__}: {e})",
                                     ok=False)

    def _run(self, image_path: Optional[str], vocabulary: str, threshold: float, drawing: str,
             score_map_class: str) -> WebDemoResult:
        start = time.perf_counter()
        if drawing not in DRAWINGS:
            raise WebDemoInputError(f"unknown drawing {drawing!r}; choose one of {', '.join(DRAWINGS)}")
        if not image_path:
            raise WebDemoInputError("no image: upload one, take one with the webcam or pick an example")
        threshold = self.check_threshold(threshold)
        image, note, (width, height) = self.read_image(image_path)  # first: a refused request changes nothing
        changed = False if self.vocabulary_is_fixed else self.set_vocabulary(vocabulary)
        prediction, cached = self._predict(image)
        # The model saw a scaled-down copy of a large upload: the table is in the upload's pixels.
        to_upload = np.array([width / image.shape[1], height / image.shape[0]] * 2)

        draw_start = time.perf_counter()
        if "instances" in prediction.predictions:
            instances = prediction.predictions["instances"].to("cpu")
            instances = instances[instances.scores >= threshold]
            names = self.class_names
            rows = [[names[label], round(score, 3), *(round(float(v), 1) for v in np.array(box) * to_upload)]
                    for box, score, label in
                    zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist())]
            summary = f"**{len(rows)} detection(s)** with score ≥ {threshold:.2f}"
        else:  # a segmentation model: one row per class present, its mean probability and extent
            rows = [[*row[:2], *(round(float(v), 1) for v in np.array(row[2:]) * to_upload)]
                    for row in _segment_rows(*self._pixel_labels(prediction, threshold))]
            summary = f"**{len(rows)} class(es) segmented** with probability ≥ {threshold:.2f}"
        if drawing == DRAW_DETECTIONS and "instances" in prediction.predictions:
            drawn = draw_predictions(image, {"instances": instances}, self.predictor.metadata)[:, :, ::-1]
        elif drawing == DRAW_SCORE_MAP:
            drawn = self._heat_map(image, prediction, score_map_class)
        else:  # the semantic map, also what "detections" draws for a segmentation model
            drawn = self._semantic_map(image, *self._pixel_labels(prediction, threshold))
        seconds = time.perf_counter()
        parts = [
            summary,
            f"model {prediction.seconds:.2f} s" + (" (same image and vocabulary: not recomputed)" if cached else ""),
            f"drawing {seconds - draw_start:.2f} s",
            f"total {seconds - start:.2f} s",
            f"{image.shape[1]} x {image.shape[0]} px" + (f", {note}" if note else ""),
        ]
        message = " · ".join(parts)
        names = self.class_names
        message += f"\n\nVocabulary ({len(names)} classes{', text encoded anew' if changed else ''}): " + _shorten(names)
        truncated = getattr(self.predictor, "truncated_names", {})
        if truncated:
            message += f"\n\n**Warning:** {truncated_names_message(truncated)}"
        return WebDemoResult(np.ascontiguousarray(drawn), rows, list(prediction.map_names), message)

    def _predict(self, image: np.ndarray) -> Tuple[_Prediction, bool]:
        """The predictions (and score maps) of ``image`` with the current vocabulary; the last one
        is kept, so that moving the slider or changing the drawing does not run the model again."""
        key = (hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape), tuple(self.class_names))
        if self._last is not None and self._last.key == key:
            return self._last, True
        start = time.perf_counter()
        h, w = image.shape[:2]
        scale = (self.score_map_bytes / (4.0 * len(self.class_names) * h * w)) ** 0.5
        maps, names = None, []
        try:
            if not self.has_score_maps:
                predictions = self.predictor.predict(image)[0]
            elif scale >= 1.0:
                predictions, (maps, names) = self.predictor.predict(image, with_score_maps=True,
                                                                    max_score_maps=self.max_score_maps)
            else:  # the maps of all classes at full size would not fit: compute them smaller
                predictions = self.predictor.predict(image)[0]
                small = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
                _, (maps, names) = self.predictor.predict(small, with_score_maps=True, max_score_maps=self.max_score_maps)
                maps = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])
        except KeyError as e:
            if e.args != ("score_maps",):
                raise
            logger.warning("%s returns no 'score_maps' when asked: serving it without score maps",
                           type(self.predictor.model).__name__)
            self._outputs_score_maps = False
            predictions, maps, names = self.predictor.predict(image)[0], None, []
        self._last = _Prediction(key, predictions, maps, list(names), time.perf_counter() - start)
        return self._last, False

    # ------------------------------------------------------------------------------- drawings
    def _heat_map(self, image: np.ndarray, prediction: _Prediction, name: str) -> np.ndarray:
        if prediction.maps is None:
            raise WebDemoInputError(NO_SCORE_MAPS)
        if name in (None, "", HIGHEST_SCORE_MAP):
            index = 0  # the maps come highest peak first
        elif name in prediction.map_names:
            index = prediction.map_names.index(name)
        else:
            raise WebDemoInputError(
                f"no score map of '{name}': the heat map shows one of the {len(prediction.map_names)} classes with the "
                f"highest peak ({', '.join(prediction.map_names)})"
            )
        probability = prediction.maps[index]
        label = f"{prediction.map_names[index]} (max {probability.max():.2f})"
        return score_map_overlay(image, probability, label=label)[:, :, ::-1]

    def _pixel_labels(self, prediction: _Prediction, threshold: float) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """A label per pixel (``IGNORE_LABEL`` where the best probability is under ``threshold``),
        that probability and the labels' names: a segmentation model's ``sem_seg`` (softmax), else
        the best of the score maps."""
        if "sem_seg" in prediction.predictions:
            best, labels = prediction.predictions["sem_seg"].float().softmax(dim=0).max(dim=0)
            best, labels, names = best.cpu().numpy(), labels.cpu().numpy(), self.class_names
        elif prediction.maps is not None:
            best, labels, names = prediction.maps.max(axis=0), prediction.maps.argmax(axis=0), prediction.map_names
        else:
            raise WebDemoInputError(NO_SCORE_MAPS)
        return np.where(best >= threshold, labels, IGNORE_LABEL).astype(np.int64), best, list(names)

    def _semantic_map(self, image: np.ndarray, labels: np.ndarray, best: np.ndarray, names: List[str]) -> np.ndarray:
        """The labels drawn by Visualizer.draw_sem_seg; a class keeps its colour whatever the image."""
        palette = colormap(rgb=True, maximum=255)
        index = {n: i for i, n in enumerate(self.class_names)}
        metadata = Metadata(name="denseclip_web_demo_semantic")
        metadata.stuff_classes = list(names)
        metadata.stuff_colors = [tuple(int(c) for c in palette[index.get(n, i) % len(palette)]) for i, n in enumerate(names)]
        visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        return visualizer.draw_sem_seg(labels, area_threshold=0).get_image()


def _segment_rows(labels: np.ndarray, best: np.ndarray, names: List[str]) -> List[List]:
    """Table rows of a semantic labelling, largest area first: class, mean probability, box."""
    present, areas = np.unique(labels[labels != IGNORE_LABEL], return_counts=True)
    rows = []
    for label in present[np.argsort(-areas, kind="stable")]:
        ys, xs = np.nonzero(labels == label)
        rows.append([names[label], round(float(best[ys, xs].mean()), 3),
                     float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
    return rows


def _shorten(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
