"""Inference on single images and the command-line demo (``demo.py`` at the repository root).

``DenseCLIPPredictor`` is Detectron2's ``DefaultPredictor`` (model built from the config, weights
from MODEL.WEIGHTS, resize per INPUT.MIN/MAX_SIZE_TEST, BGR input converted per INPUT.FORMAT) with
two additions: ``set_vocabulary`` detects classes given by name (language-guided heads), and
``score_maps`` returns DenseCLIP's pixel-text score maps as per-class probability maps aligned with
the original image.

``run_demo`` draws the predictions of a set of images (files, folders, glob patterns)::

    python demo.py --config-file configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml \
        --input photos/ --output out/ --vocabulary "cat,remote control,sofa" --score-maps \
        --opts MODEL.WEIGHTS model_final.pth
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from .engine.checkpoint import AtomicDetectionCheckpointer
from .engine.config import build_config, resolve_config_vocabulary
from .modeling.vocabulary import resolve_vocabulary
from .text import validate_vocabulary

logger = logging.getLogger(__name__)

__all__ = [
    "DenseCLIPPredictor",
    "DemoSummary",
    "draw_predictions",
    "expand_inputs",
    "get_parser",
    "parse_vocabulary",
    "run_demo",
    "sanitize_file_name",
    "score_map_overlay",
    "score_map_probabilities",
    "setup_cfg",
    "top_score_map_classes",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------ vocabulary
def parse_vocabulary(value: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """``"cat, remote control,sofa"`` -> ``["cat", "remote control", "sofa"]``.

    Blanks around names are stripped and empty entries dropped; ``None`` means "no vocabulary".
    The names are then checked by :func:`denseclip.text.validate_vocabulary` (ValueError).
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [n for n in (str(n).strip() for n in items) if n]
    if not names:
        raise ValueError(f"the vocabulary {value!r} contains no class name; give comma-separated names, e.g. \"cat,sofa\"")
    validate_vocabulary(names)
    return names


def _vocabulary_arg(value: str) -> List[str]:
    try:
        return parse_vocabulary(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _metadata_for(names: Sequence[str], base: Optional[Metadata] = None) -> Metadata:
    """A Metadata object for drawing, not registered in the MetadataCatalog. Colours of ``base``
    (the dataset's metadata) are kept when it has the same classes."""
    metadata = Metadata(name="denseclip_predictor_vocabulary")
    metadata.thing_classes = list(names)
    if base is not None and list(base.get("thing_classes", [])) == list(names) and base.get("thing_colors", None):
        metadata.thing_colors = list(base.thing_colors)
    return metadata


# ------------------------------------------------------------------------------------ predictor
class DenseCLIPPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` for DenseCLIP models.

    Args:
        cfg: a config with the DenseCLIP keys (``add_denseclip_config``).
        vocabulary: optional class names to detect. When the config cannot name the classes the
            model was trained with (MODEL.DENSECLIP.CLASS_NAMES empty and no metadata for
            DATASETS.TRAIN[0]), the model is built with these names; otherwise it is built with
            the training vocabulary, MODEL.WEIGHTS is loaded, and then the vocabulary is swapped.

    Attributes:
        model, cfg, aug, input_format: as in ``DefaultPredictor``.
        metadata: a ``Metadata`` whose ``thing_classes`` are the current vocabulary (for
            Detectron2's ``Visualizer``); the registered datasets' metadata is never modified.
    """

    def __init__(self, cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None):
        # DefaultPredictor.__init__ is not called: it loads weights with a checkpointer that
        # silently skips tensors of another shape, and the class names may have to come from
        # ``vocabulary``. The attributes are the same.
        vocabulary = parse_vocabulary(vocabulary)
        self.cfg = cfg.clone()
        self.cfg.defrost()
        try:
            resolve_config_vocabulary(self.cfg)  # the config's, its datasets' or MODEL.WEIGHTS' names
        except ValueError:
            if not vocabulary:
                raise ValueError(
                    "Cannot determine the class names to build the model: set MODEL.DENSECLIP.CLASS_NAMES, "
                    "use a config whose DATASETS.TRAIN[0] is registered with thing_classes, or give a vocabulary"
                ) from None
            logger.info("The config names no classes: building the model with the vocabulary %s", vocabulary)
            self.cfg.MODEL.DENSECLIP.CLASS_NAMES = list(vocabulary)
            resolve_vocabulary(self.cfg)
        self.cfg.freeze()

        self.model = build_model(self.cfg)
        self.model.eval()
        self._load_weights(self.cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST], self.cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got '{self.input_format}'")

        base = None
        if len(self.cfg.DATASETS.TEST) and self.cfg.DATASETS.TEST[0] in MetadataCatalog.list():
            base = MetadataCatalog.get(self.cfg.DATASETS.TEST[0])
        self._dataset_metadata = base
        self.metadata = _metadata_for(self.class_names, base)
        if vocabulary and list(vocabulary) != self.class_names:
            self.set_vocabulary(vocabulary)

    def _load_weights(self, weights: str) -> None:
        if not weights:
            logger.warning(
                "MODEL.WEIGHTS is empty: the detector is untrained (random weights%s), so its predictions "
                "are meaningless; useful only as a smoke test",
                f", CLIP towers from '{self.cfg.MODEL.CLIP.PRETRAINED}'" if self.cfg.MODEL.CLIP.PRETRAINED else "",
            )
            return
        # The project's checkpointer: clear errors for missing files and shape mismatches.
        checkpointer = AtomicDetectionCheckpointer(self.model, reinit_mismatched=bool(self.cfg.MODEL.REINIT_VOCABULARY_MISMATCH))
        checkpointer.load(weights)

    # -------------------------------------------------------------------------------- vocabulary
    @property
    def class_names(self) -> List[str]:
        return list(self.model.class_names)

    def set_vocabulary(self, names: Union[str, Sequence[str]]) -> None:
        """Detect ``names`` from now on (``model.set_vocabulary``; needs language-guided heads) and
        use them as labels in ``self.metadata``."""
        names = parse_vocabulary(names)
        if names != self.class_names:
            if not getattr(self.model, "language_guided", False):
                raise ValueError(
                    f"This model detects a fixed set of {len(self.class_names)} classes (MODEL.DENSECLIP.HEAD "
                    f"'{self.cfg.MODEL.DENSECLIP.HEAD}'): another vocabulary needs the language-guided heads "
                    "(MODEL.DENSECLIP.HEAD 'language')"
                )
            self.model.set_vocabulary(names)
        self.metadata = _metadata_for(names, self._dataset_metadata)

    # -------------------------------------------------------------------------------- inference
    def _inputs(self, original_image: np.ndarray) -> Dict:
        """The model's input dict for a BGR uint8 H x W x 3 image (DefaultPredictor's steps)."""
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 BGR image, got an array of shape {original_image.shape}")
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        height, width = image.shape[:2]
        image = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, original_image: np.ndarray) -> Dict:
        """Predictions (``{"instances": Instances}`` in original image coordinates) for a BGR image."""
        return self.predict(original_image)[0]

    def predict(
        self, original_image: np.ndarray, with_score_maps: bool = False, max_score_maps: Optional[int] = None
    ) -> Tuple[Dict, Optional[Tuple[np.ndarray, List[str]]]]:
        """Predictions and, with ``with_score_maps``, the score maps of the same forward pass (see
        :meth:`score_maps`; ``max_score_maps`` keeps the classes with the highest maximum)."""
        inputs = self._inputs(original_image)
        captured: Dict[str, torch.Tensor] = {}

        def capture_padded_size(module, args):
            captured["padded_size"] = tuple(args[0].shape[-2:])

        def capture_score_map(module, args, output):
            captured["logits"] = output.score_map[0].detach()

        handles = []
        if with_score_maps:
            handles = [self.model.backbone.register_forward_pre_hook(capture_padded_size),
                       self.model.text_side.register_forward_hook(capture_score_map)]
        try:
            with torch.no_grad():
                predictions = self.model([inputs])[0]
        finally:
            for handle in handles:
                handle.remove()
        if not with_score_maps:
            return predictions, None
        image_size = tuple(inputs["image"].shape[-2:])
        maps = self._postprocess_score_maps(
            captured["logits"], captured["padded_size"], image_size, (inputs["height"], inputs["width"]), max_score_maps
        )
        return predictions, maps

    def score_maps(self, original_image: np.ndarray, max_classes: Optional[int] = None) -> Tuple[np.ndarray, List[str]]:
        """DenseCLIP's pixel-text score maps of a BGR image as probabilities.

        Returns ``(maps, names)``: ``maps`` is a K x H x W float32 array (H x W: the original image
        size) of ``sigmoid(cosine / tau)`` per class, ``names`` the K class names. The maps are
        computed on the resized, padded input; they are upsampled to the padded size, cropped to
        the resized image (dropping the padding) and resized to the original image. With
        ``max_classes``, only the classes with the highest maximum probability are returned,
        highest first.
        """
        inputs = self._inputs(original_image)
        with torch.no_grad():
            images = self.model.preprocess_image([inputs])
            logits = self.model.extract_features(images).score_map[0]
        return self._postprocess_score_maps(
            logits, tuple(images.tensor.shape[-2:]), tuple(images.image_sizes[0]), (inputs["height"], inputs["width"]), max_classes
        )

    def _postprocess_score_maps(
        self,
        logits: torch.Tensor,
        padded_size: Tuple[int, int],
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
        max_classes: Optional[int] = None,
    ) -> Tuple[np.ndarray, List[str]]:
        names = self.class_names
        order = top_score_map_classes(logits, padded_size, image_size, max_classes)
        maps = score_map_probabilities(logits, padded_size, image_size, output_size, classes=order)
        return maps, [names[i] for i in order]


def top_score_map_classes(
    logits: torch.Tensor, padded_size: Tuple[int, int], image_size: Tuple[int, int], max_classes: Optional[int] = None
) -> List[int]:
    """Indices of the ``max_classes`` classes (all when None or <= 0) of K x h x w score-map logits
    with the highest maximum over the cells that cover the image (not its padding), highest first.
    Bilinear upsampling never exceeds the values it interpolates, so the low-resolution maximum
    ranks the classes as the full-resolution one would."""
    k, h, w = logits.shape
    if max_classes is None or max_classes <= 0 or max_classes >= k:
        return list(range(k))
    rows = max(1, min(h, -(-image_size[0] * h // padded_size[0])))
    cols = max(1, min(w, -(-image_size[1] * w // padded_size[1])))
    peak = logits[:, :rows, :cols].float().flatten(1).max(dim=1).values
    return peak.argsort(descending=True)[:max_classes].tolist()


def score_map_probabilities(
    logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    classes: Optional[Sequence[int]] = None,
    chunk: int = 8,
) -> np.ndarray:
    """Score-map logits (K x h x w, computed on a padded input of ``padded_size``) as probabilities
    aligned with the original image: bilinearly upsampled to the padded size, cropped to the
    ``image_size`` the image had inside the padding (top-left), resized to ``output_size`` and
    passed through a sigmoid. Returns a len(classes) x H x W float32 array. Classes are processed
    ``chunk`` at a time to bound memory at large padded sizes."""
    classes = list(range(logits.shape[0])) if classes is None else list(classes)
    out = np.empty((len(classes), output_size[0], output_size[1]), dtype=np.float32)
    for start in range(0, len(classes), chunk):
        index = classes[start : start + chunk]
        maps = logits[index][None].float()
        maps = F.interpolate(maps, size=tuple(padded_size), mode="bilinear", align_corners=False)
        maps = maps[..., : image_size[0], : image_size[1]]
        maps = F.interpolate(maps, size=tuple(output_size), mode="bilinear", align_corners=False)
        out[start : start + len(index)] = maps[0].sigmoid().cpu().numpy()
    return out


# ------------------------------------------------------------------------------------ drawing
def sanitize_file_name(name: str) -> str:
    """A class name usable in a file name: runs of characters other than letters, digits, '.', '-'
    and '_' become '_' ("remote control" -> "remote_control")."""
    cleaned = re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("._")
    return cleaned or "class"


def score_map_overlay(bgr_image: np.ndarray, probability: np.ndarray, alpha: float = 0.5, label: str = "") -> np.ndarray:
    """A JET heat map of an H x W probability map blended with the BGR image (H x W x 3 uint8)."""
    import cv2

    heat = cv2.applyColorMap(np.clip(probability * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(np.ascontiguousarray(bgr_image), 1.0 - alpha, heat, alpha, 0.0)
    if label:
        scale = max(0.4, min(bgr_image.shape[:2]) / 600.0)
        thickness = max(1, int(round(scale * 2)))
        origin = (5, 5 + int(20 * scale))
        cv2.putText(overlay, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(overlay, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return overlay


def draw_predictions(bgr_image: np.ndarray, predictions: Dict, metadata: Metadata) -> np.ndarray:
    """Detections (boxes, labels, scores, masks) drawn by Detectron2's Visualizer; BGR uint8."""
    from detectron2.utils.visualizer import ColorMode, Visualizer

    visualizer = Visualizer(bgr_image[:, :, ::-1], metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    if "instances" in predictions:
        drawn = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    else:
        drawn = visualizer.output
    return drawn.get_image()[:, :, ::-1]


# ------------------------------------------------------------------------------------ CLI
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DenseCLIP demo: draw detections (and pixel-text score maps) of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns (quoted)")
    parser.add_argument("--output", required=True, help="folder for the drawn images (created if needed)")
    parser.add_argument("--vocabulary", type=_vocabulary_arg, default=None,
                        help='comma-separated class names to detect, e.g. "cat,remote control,sofa" '
                             "(default: the model's training vocabulary)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a drawn detection (ROI heads and RetinaNet); --opts win over it")
    parser.add_argument("--score-maps", action="store_true",
                        help="also write <stem>_scoremap_<class>.jpg heat maps of the pixel-text score maps")
    parser.add_argument("--max-score-maps", type=int, default=10,
                        help="score maps of at most this many classes per image, highest maximum first (<= 0: all)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (MODEL.DEVICE cpu)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config file, then --confidence-threshold, then --opts, then --cpu; frozen. The class names
    are resolved by the predictor (a --vocabulary may have to name them)."""
    opts = []
    threshold = getattr(args, "confidence_threshold", None)
    if threshold is not None:
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold, "MODEL.RETINANET.SCORE_THRESH_TEST", threshold,
                 "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", threshold]
    opts += list(getattr(args, "opts", None) or [])
    if getattr(args, "cpu", False):
        opts += ["MODEL.DEVICE", "cpu"]
    cfg = build_config(args.config_file, opts, resolve_classes=False)
    if cfg.MODEL.WEIGHTS and cfg.MODEL.CLIP.PRETRAINED:
        # MODEL.WEIGHTS holds the whole model, CLIP towers included: no need to fetch CLIP first.
        logger.info("MODEL.WEIGHTS given: MODEL.CLIP.PRETRAINED '%s' is not loaded", cfg.MODEL.CLIP.PRETRAINED)
        cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.freeze()
    return cfg


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Image paths of ``inputs`` (files, folders: their images, glob patterns), sorted and without
    duplicates, and ``(input, reason)`` for those that name nothing."""
    paths: Dict[str, str] = {}
    missing: List[Tuple[str, str]] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS)]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                missing.append((spec, f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = [f for f in glob.glob(spec, recursive=True) if os.path.isfile(f)]
            if not found:
                missing.append((spec, "no file matches this pattern"))
        else:
            missing.append((spec, "no such file or directory"))
            continue
        for f in found:
            paths.setdefault(os.path.realpath(f), os.path.normpath(f))
    return sorted(set(paths.values())), missing


def _output_stems(paths: Sequence[str]) -> List[str]:
    """File stems for the outputs, made unique ("a", "a_1") when two inputs share a name."""
    used: Dict[str, int] = {}
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in used:
            used[stem] += 1
            unique = f"{stem}_{used[stem]}"
            while unique in used:
                used[stem] += 1
                unique = f"{stem}_{used[stem]}"
            logger.info("'%s' has the name of an earlier input: writing it as %s.jpg", path, unique)
            stem = unique
        used.setdefault(stem, 0)
        stems.append(stem)
    return stems


def _score_map_names(names: Sequence[str]) -> List[str]:
    """Sanitised, unique file-name parts for class names."""
    out, seen = [], set()
    for name in names:
        base = candidate = sanitize_file_name(name)
        n = 1
        while candidate in seen:
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def _read_failure_reason(path: str, error: Exception) -> str:
    """Why ``read_image`` failed on ``path``, in words."""
    if not os.path.exists(path):
        return "no such file or directory"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    if type(error).__name__ == "UnidentifiedImageError":
        return "not an image file (its content is in no image format PIL can read)"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read it ({error.strerror})"
    return f"cannot read it as an image ({type(error).__name__}: {error})"


@dataclass
class DemoSummary:
    """What ``run_demo`` did: files written, inputs that failed (with the reason), the predictor."""

    written: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    num_images: int = 0
    predictor: Optional[DenseCLIPPredictor] = None

    @property
    def exit_code(self) -> int:
        """0 when at least one image was processed, 1 otherwise."""
        return 0 if self.num_images > 0 else 1


def run_demo(args: argparse.Namespace) -> DemoSummary:
    """Run the demo for parsed ``get_parser()`` arguments; ``summary.exit_code`` for the shell.

    Unreadable or missing inputs are reported (one log line each, naming the file and the reason)
    and skipped; the other images are still processed.
    """
    import cv2
    from detectron2.data.detection_utils import read_image
    from tqdm import tqdm

    vocabulary = parse_vocabulary(getattr(args, "vocabulary", None))
    cfg = setup_cfg(args)
    summary = DemoSummary()
    paths, missing = expand_inputs(args.input)
    for spec, reason in missing:
        logger.warning("Skipping '%s': %s", spec, reason)
        summary.failed.append((spec, reason))
    if not paths:
        logger.error("No input image to process (inputs: %s)", list(args.input))
        print(f"DenseCLIP demo: 0 image(s) written to {args.output}, {len(summary.failed)} failed")
        return summary

    predictor = DenseCLIPPredictor(cfg, vocabulary=vocabulary)
    summary.predictor = predictor
    logger.info("Vocabulary (%d classes): %s", len(predictor.class_names), predictor.class_names)
    os.makedirs(args.output, exist_ok=True)
    with_maps = bool(getattr(args, "score_maps", False))
    max_maps = getattr(args, "max_score_maps", 10)
    max_maps = max_maps if max_maps and max_maps > 0 else None

    for path, stem in tqdm(list(zip(paths, _output_stems(paths))), desc="DenseCLIP demo", unit="image"):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped with its reason
            reason = _read_failure_reason(path, e)
            logger.warning("Skipping '%s': %s", path, reason)
            summary.failed.append((path, reason))
            continue
        try:
            predictions, maps = predictor.predict(image, with_score_maps=with_maps, max_score_maps=max_maps)
            files = {os.path.join(args.output, f"{stem}.jpg"): draw_predictions(image, predictions, predictor.metadata)}
            if maps is not None:
                probabilities, names = maps
                for prob, name, file_part in zip(probabilities, names, _score_map_names(names)):
                    label = f"{name} (max {prob.max():.2f})"
                    files[os.path.join(args.output, f"{stem}_scoremap_{file_part}.jpg")] = score_map_overlay(image, prob, label=label)
            for file_name, drawn in files.items():
                if not cv2.imwrite(file_name, drawn):
                    raise OSError(f"cv2.imwrite could not write '{file_name}'")
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge image
            logger.error("Failed on '%s': %s: %s", path, type(e).__name__, e)
            logger.debug("Traceback:", exc_info=True)
            summary.failed.append((path, f"{type(e).__name__}: {e}"))
            continue
        n = len(predictions["instances"]) if "instances" in predictions else 0
        logger.info("%s: %d detection(s) -> %s", path, n, os.path.join(args.output, f"{stem}.jpg"))
        summary.written.extend(files)
        summary.num_images += 1

    print(
        f"DenseCLIP demo: {summary.num_images} image(s) written to {args.output}"
        f"{' (with score maps)' if with_maps else ''}, {len(summary.failed)} failed"
    )
    return summary
