"""Inference on single images with a vocabulary of your choice.

``DenseCLIPPredictor`` is Detectron2's ``DefaultPredictor`` (model built from the config, weights
from MODEL.WEIGHTS, resize per INPUT.MIN/MAX_SIZE_TEST, BGR input converted per INPUT.FORMAT) with
two additions: ``set_vocabulary`` detects classes given by name (language-guided heads), and
``score_maps`` returns DenseCLIP's pixel-text score maps as per-class probability maps aligned with
the original image (the model's "score_maps" output). Plain ``DefaultPredictor(cfg)`` works as
well. ``parse_vocabulary`` reads a vocabulary: comma-separated names or the name of a preset
(``VOCABULARY_PRESETS``: the class lists of COCO, LVIS, Pascal VOC, Cityscapes).

Drawing lives in :mod:`denseclip.visualization`, the command line in :mod:`denseclip.demo_cli`
(``demo.py`` at the repository root).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.utils.colormap import colormap

from .checkpoint import AtomicDetectionCheckpointer, read_checkpoint
from .modeling.composition import build_denseclip_model
from .modeling.vocabulary import VOCABULARY_META_ARCHITECTURES, vocabulary_from_config

logger = logging.getLogger(__name__)

__all__ = [
    "DenseCLIPPredictor",
    "VOCABULARY_PRESETS",
    "parse_vocabulary",
    "predictor_vocabulary",
    "vocabulary_preset",
]


# ------------------------------------------------------------------------------------ presets
def _coco_classes() -> List[str]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["name"] for c in COCO_CATEGORIES if c["isthing"]]


def _lvis_classes() -> List[str]:
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    # LVIS names are synset-like ("aerosol_can", "bow_(weapon)"): words for the text encoder.
    return [c["name"].replace("_", " ") for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]


# Pascal VOC's run-together names, as words for the text encoder.
_VOC_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def _voc_classes() -> List[str]:
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES

    return [_VOC_WORDS.get(name, name) for name in CLASS_NAMES]


def _cityscapes_classes() -> List[str]:
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    return list(_get_builtin_metadata("cityscapes")["thing_classes"])


# name -> (description, loader). The class lists come from Detectron2's builtin dataset metadata.
VOCABULARY_PRESETS: Dict[str, Tuple[str, Callable[[], List[str]]]] = {
    "coco": ("the 80 COCO thing classes", _coco_classes),
    "lvis": ("the 1203 LVIS v1 classes (underscores as spaces)", _lvis_classes),
    "voc": ("the 20 Pascal VOC classes", _voc_classes),
    "cityscapes": ("the 8 Cityscapes thing classes", _cityscapes_classes),
}


def vocabulary_preset(name: str) -> List[str]:
    """The class names of the preset ``name`` (a key of ``VOCABULARY_PRESETS``)."""
    if name not in VOCABULARY_PRESETS:
        raise ValueError(f"unknown vocabulary preset {name!r}; presets: {', '.join(VOCABULARY_PRESETS)}")
    return VOCABULARY_PRESETS[name][1]()


# ------------------------------------------------------------------------------------ vocabulary
def parse_vocabulary(value: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """``"cat, remote control,sofa"`` or one name per line -> ``["cat", "remote control", "sofa"]``;
    ``"coco"`` -> the 80 COCO classes.

    A string that is exactly the name of a preset (``VOCABULARY_PRESETS``, surrounding blanks
    ignored) selects the preset; any other string is a list of names separated by commas and/or
    line breaks, so ``"coco,"`` is the one class "coco". Blanks around names are stripped and empty entries dropped; a list is
    taken as names (never a preset); ``None`` means "no vocabulary". The names are checked where
    they enter the model (``model.set_vocabulary`` / its text side: empty, blank, duplicates).
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in VOCABULARY_PRESETS:
        return vocabulary_preset(value.strip())
    items = re.split(r"[,\r\n]", value) if isinstance(value, str) else list(value)
    names = [n for n in (str(n).strip() for n in items) if n]
    if not names:
        raise ValueError(
            f"the vocabulary {value!r} contains no class name; give names separated by commas or line breaks, e.g. \"cat,sofa\""
        )
    return names


def truncated_names_message(truncated: Dict[str, str]) -> str:
    """One line for the user: which class names did not fit the model's text context, what was kept."""
    cuts = ", ".join(f"{name!r} -> {kept!r}" for name, kept in truncated.items())
    return (f"{len(truncated)} class name(s) do not fit the model's text context (MODEL.DENSECLIP.NAME_CONTEXT_LENGTH, "
            f"fixed by its config/checkpoint) and were cut: {cuts}")


def predictor_vocabulary(cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None,
                         checkpoint: Optional[Dict[str, Any]] = None) -> Optional[List[str]]:
    """The class names a predictor builds its DenseCLIP model with: the config's
    (:func:`~denseclip.modeling.vocabulary_from_config`: MODEL.DENSECLIP.CLASS_NAMES, else the
    classes of DATASETS.TRAIN[0]); when it names none, those recorded in ``checkpoint`` (the
    contents of MODEL.WEIGHTS, :func:`~denseclip.checkpoint.read_checkpoint`), else ``vocabulary``.
    The checkpointer then matches the weights' classes to them by name. None for a
    meta-architecture without a vocabulary (its classes are its NUM_CLASSES)."""
    kind = VOCABULARY_META_ARCHITECTURES.get(cfg.MODEL.META_ARCHITECTURE)
    if kind is None:
        return None
    try:
        return vocabulary_from_config(cfg, kind)
    except ValueError as e:
        names = (checkpoint or {}).get("vocabulary")
        if names:
            logger.info("Vocabulary: the %d class names recorded in MODEL.WEIGHTS %s", len(names), cfg.MODEL.WEIGHTS)
            return list(names)
        if vocabulary:
            logger.info("The config names no classes: building the model with the vocabulary %s", list(vocabulary))
            return list(vocabulary)
        raise ValueError(f"{e}; or give the predictor a vocabulary, or MODEL.WEIGHTS a checkpoint that records its class names") from None


def _metadata_for(names: Sequence[str], base: Optional[Metadata] = None, kind: str = "thing") -> Metadata:
    """A Metadata object for drawing, not registered in the MetadataCatalog: ``thing_classes`` for
    detectors, ``stuff_classes`` for semantic segmentation models (``kind`` "stuff", what
    ``Visualizer.draw_sem_seg`` reads). Colours of ``base`` (the dataset's metadata) are kept when
    it has the same classes; segmentation classes otherwise get Detectron2's colormap, so that a
    class keeps its colour from image to image (draw_sem_seg would draw random ones)."""
    metadata = Metadata(name="denseclip_predictor_vocabulary")
    metadata.set(**{f"{kind}_classes": list(names)})
    colors = base.get(f"{kind}_colors", None) if base is not None and list(base.get(f"{kind}_classes", [])) == list(names) else None
    if colors is None and kind == "stuff":
        palette = colormap(rgb=True)
        colors = [tuple(int(c) for c in palette[i % len(palette)]) for i in range(len(names))]
    if colors:
        metadata.set(**{f"{kind}_colors": list(colors)})
    return metadata


# ------------------------------------------------------------------------------------ predictor
class DenseCLIPPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` for DenseCLIP models.

    Args:
        cfg: a config with the DenseCLIP keys (``add_denseclip_config``).
        vocabulary: optional class names to detect. The model is built with the names of
            :func:`predictor_vocabulary` (the config's, else MODEL.WEIGHTS', else these),
            MODEL.WEIGHTS (read once) is loaded, and then the vocabulary is swapped to these. The
            config is never written to: ``cfg`` is the caller's, cloned.

    Attributes:
        model, cfg, aug, input_format: as in ``DefaultPredictor``.
        metadata: a ``Metadata`` whose ``thing_classes`` (``stuff_classes`` for semantic
            segmentation models) are the current vocabulary (for Detectron2's ``Visualizer``);
            the registered datasets' metadata is never modified.
    """

    def __init__(self, cfg: CfgNode, vocabulary: Optional[Sequence[str]] = None):
        # DefaultPredictor.__init__ is not called: it loads weights with a checkpointer that
        # silently skips tensors of another shape, and the class names may have to come from
        # ``vocabulary``. The attributes are the same.
        vocabulary = parse_vocabulary(vocabulary)
        self.cfg = cfg.clone()
        self.cfg.freeze()
        weights = self.cfg.MODEL.WEIGHTS
        # Read once, before the model is built: the weights may name the classes it is built with.
        checkpoint = read_checkpoint(weights) if weights else None
        self.model = build_denseclip_model(self.cfg, predictor_vocabulary(self.cfg, vocabulary, checkpoint))
        self.model.eval()
        self._load_weights(weights, checkpoint)
        self._setup_inputs_and_metadata()
        if vocabulary and list(vocabulary) != self.class_names:
            self.set_vocabulary(vocabulary)

    def _setup_inputs_and_metadata(self) -> None:
        """DefaultPredictor's test-time resize and input format, and the drawing metadata of the
        current vocabulary (on top of DATASETS.TEST[0]'s, e.g. its colours)."""
        self.aug = T.ResizeShortestEdge([self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST], self.cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got '{self.input_format}'")
        base = None
        if len(self.cfg.DATASETS.TEST) and self.cfg.DATASETS.TEST[0] in MetadataCatalog.list():
            base = MetadataCatalog.get(self.cfg.DATASETS.TEST[0])
        self._dataset_metadata = base
        # Detectors predict "things", semantic segmentation models "stuff" (Detectron2's metadata fields).
        self._class_kind = VOCABULARY_META_ARCHITECTURES.get(self.cfg.MODEL.META_ARCHITECTURE, "thing")
        self.metadata = _metadata_for(self.class_names, base, self._class_kind)

    def _load_weights(self, weights: str, contents: Optional[Dict[str, Any]]) -> None:
        if not weights:
            logger.warning(
                "MODEL.WEIGHTS is empty: the detector is untrained (random weights%s), so its predictions "
                "are meaningless; useful only as a smoke test",
                f", CLIP towers from '{self.cfg.MODEL.CLIP.PRETRAINED}'" if self.cfg.MODEL.CLIP.PRETRAINED else "",
            )
            return
        # The project's checkpointer: clear errors for missing files and shape mismatches.
        checkpointer = AtomicDetectionCheckpointer(self.model, reinit_mismatched=bool(self.cfg.MODEL.REINIT_VOCABULARY_MISMATCH))
        checkpointer.load(weights, contents=contents)

    # -------------------------------------------------------------------------------- vocabulary
    @property
    def class_names(self) -> List[str]:
        return list(self.model.class_names)

    @property
    def truncated_names(self) -> Dict[str, str]:
        """The current vocabulary's names that were cut to fit the model's text context (fixed by
        its config or checkpoint), each with the text that was kept; {} when every name fits."""
        text_side = getattr(self.model, "text_side", None)
        return dict(getattr(text_side, "truncated_names", {}))

    def set_vocabulary(self, names: Union[str, Sequence[str]]) -> None:
        """Detect ``names`` from now on (``model.set_vocabulary``; needs language-guided heads) and
        use them as labels in ``self.metadata``."""
        names = parse_vocabulary(names)
        if names != self.class_names:
            if not getattr(self.model, "language_guided", False):
                raise ValueError(
                    f"This model detects a fixed set of {len(self.class_names)} classes (Detectron2's stock heads, "
                    "one learned classifier per training class): another vocabulary needs the language-guided heads "
                    "(MODEL.DENSECLIP.HEAD 'language')"
                )
            self.model.set_vocabulary(names)
        self.metadata = _metadata_for(names, self._dataset_metadata, self._class_kind)

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
        """Predictions for a BGR image, in original image coordinates: ``{"instances": Instances}``
        (detectors) or ``{"sem_seg": K x H x W scores}`` (semantic segmentation models)."""
        return self.predict(original_image)[0]

    def predict(
        self, original_image: np.ndarray, with_score_maps: bool = False, max_score_maps: Optional[int] = None
    ) -> Tuple[Dict, Optional[Tuple[np.ndarray, List[str]]]]:
        """Predictions and, with ``with_score_maps``, the score maps of the same forward pass (the
        model's "score_maps" output, see :meth:`score_maps`; ``max_score_maps`` keeps the classes
        with the highest maximum, highest first)."""
        inputs = self._inputs(original_image)
        asked = self.model.return_score_maps
        self.model.return_score_maps = with_score_maps
        try:
            with torch.no_grad():
                predictions = self.model([inputs])[0]
        finally:
            self.model.return_score_maps = asked
        if not with_score_maps:
            return predictions, None
        maps = predictions.pop("score_maps")
        order = list(range(maps.shape[0]))
        if max_score_maps is not None and 0 < max_score_maps < maps.shape[0]:
            order = maps.flatten(1).max(dim=1).values.argsort(descending=True)[:max_score_maps].tolist()
        names = self.class_names
        return predictions, (maps[order].cpu().numpy(), [names[i] for i in order])

    def score_maps(self, original_image: np.ndarray, max_classes: Optional[int] = None) -> Tuple[np.ndarray, List[str]]:
        """DenseCLIP's pixel-text score maps of a BGR image as probabilities.

        Returns ``(maps, names)``: ``maps`` is a K x H x W float32 array (H x W: the original image
        size) of ``sigmoid(cosine / tau)`` per class, ``names`` the K class names. The maps are
        computed on the resized, padded input; they are upsampled to the padded size, cropped to
        the resized image (dropping the padding) and resized to the original image. With
        ``max_classes``, only the classes with the highest maximum probability are returned,
        highest first.
        """
        return self.predict(original_image, with_score_maps=True, max_score_maps=max_classes)[1]
