"""A ``DatasetMapper`` that survives bad data, so that one broken file never kills a long run.

Detectron2's ``DatasetMapper`` raises on the first unreadable image, and its ``read_image`` clips
16-bit images instead of scaling them. ``RobustDatasetMapper`` (same config keys, drop-in) differs
in three ways:

* Images: EXIF orientation is applied and every PIL mode is converted to ``INPUT.FORMAT``, like
  ``read_image``; in addition 16-bit images ("I;16*", and "I" as older Pillow versions open 16-bit
  PNGs) are scaled linearly to 8 bits (65535 -> 255) instead of being clipped to white. Alpha is
  discarded, as PIL's conversion does.
* Bad images: a missing, zero-byte, truncated or corrupt file, or one whose decoded size differs
  from the size recorded in the dataset, makes training skip the sample: one warning line names
  the file and the reason (once per file and process), and the mapper returns None, which
  Detectron2's ``MapDataset`` answers by mapping another, random sample. Any other error raised
  while mapping a training sample (a malformed annotation) is skipped the same way. After
  ``max_consecutive_failures`` skips in a row the mapper raises instead, because then the dataset
  or the code is broken, not one sample. At evaluation (``is_train=False``) a bad image raises
  ``BadImageError`` naming the file: silently evaluating on fewer images would bias the metrics.
* Annotations (training): boxes are clipped to the image; boxes with no area inside it, or not 4
  finite numbers, are dropped; polygons with fewer than 3 points (or non-finite coordinates) are
  dropped. When instance masks are trained, an instance left without any valid polygon or RLE is
  dropped, box included: keeping its box with an empty mask would teach the mask head that the
  object is background. With masks off, its box is kept. Self-intersecting polygons are valid
  input to pycocotools' rasterisation and are kept.

Images without annotations and crowd-only images are valid training samples here; Detectron2's
loader removes them beforehand when DATALOADER.FILTER_EMPTY_ANNOTATIONS is True (its default).

Skipping relies on ``MapDataset``'s retry, which Detectron2 v0.6 breaks on Python >= 3.11
(``random.sample`` on a set); ``scripts/install_detectron2.py`` patches it in the installed Detectron2.
"""
import copy
import io
import logging
import math
from typing import Dict, List, Optional, Set

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)


class BadImageError(RuntimeError):
    """An image file that cannot be used: missing, empty, truncated, corrupt or of the wrong size."""

    def __init__(self, file_name: str, reason: str):
        super().__init__(f"Cannot use image {file_name}: {reason}")
        self.file_name = file_name
        self.reason = reason


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit grayscale to 8 bits; PIL's own conversion would clip everything above 255."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.asarray(image).astype(np.float32)
    if image.mode != "I" or values.max() > 255:
        values /= 257.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


def read_image_robust(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Like ``detectron2.data.detection_utils.read_image`` (EXIF orientation applied, converted
    to ``format``), but 16-bit aware, and every failure is a ``BadImageError`` with a reason."""
    try:
        with PathManager.open(file_name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadImageError(file_name, "file not found") from None
    except OSError as e:
        raise BadImageError(file_name, f"cannot read the file ({e})") from e
    if not data:
        raise BadImageError(file_name, "the file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes everything now, so a truncated file fails here
        image = ImageOps.exif_transpose(image)
    except Image.UnidentifiedImageError:
        raise BadImageError(file_name, "not a recognised image format (corrupt, or not an image)") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImageError(file_name, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e
    return utils.convert_PIL_to_numpy(_to_8bit(image), format)


# PIL modes of label maps whose pixel values are the class indices ("P": palette indices, which is
# also what Detectron2's SemSegEvaluator reads; converting to "L" would turn them into grey levels).
LABEL_MODES = ("L", "P")


def read_label_map(file_name: str) -> np.ndarray:
    """Class indices of a semantic label PNG (uint8 H x W), as SemSegEvaluator reads them; a
    ``BadImageError`` for an unreadable file or one that is not single-channel."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(io.BytesIO(f.read()))
            image.load()
    except FileNotFoundError:
        raise BadImageError(file_name, "label file not found") from None
    except Exception as e:
        raise BadImageError(file_name, f"not a readable label image ({type(e).__name__}: {e})") from e
    if image.mode not in LABEL_MODES:
        raise BadImageError(
            file_name,
            f"label maps must be single-channel PNGs (mode L or P) whose pixel values are class indices "
            f"(255 = ignore), got mode {image.mode}; convert colour-coded maps to indices first",
        )
    return np.asarray(image, dtype=np.uint8)


def _is_finite_sequence(values, length: Optional[int] = None) -> bool:
    try:
        return (length is None or len(values) == length) and all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


class RobustDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that skips bad training samples and repairs their annotations (see the
    module docstring). Built like it: ``RobustDatasetMapper(cfg, is_train)``."""

    @configurable
    def __init__(self, is_train: bool, *, max_consecutive_failures: int = 100, **kwargs):
        """
        Args:
            is_train, kwargs: as ``DatasetMapper``.
            max_consecutive_failures: raise once this many training samples in a row could not
                be mapped.
        """
        super().__init__(is_train, **kwargs)
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0
        self._reported: Set[str] = set()

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """Map one dataset dict; None (training only) when the sample cannot be used."""
        try:
            result = self._map(copy.deepcopy(dataset_dict))
        except BadImageError as e:
            if not self.is_train:
                raise
            return self._skip(e.file_name, e.reason)
        except Exception as e:
            if not self.is_train:
                raise
            return self._skip(dataset_dict.get("file_name", "<no file_name>"), f"{type(e).__name__}: {e}")
        self._consecutive_failures = 0
        return result

    def _skip(self, file_name: str, reason: str) -> None:
        """Record a skipped sample: one warning per file, and a hard stop when nothing works."""
        self._consecutive_failures += 1
        reason = " ".join(reason.split())  # one line, whatever the exception message looks like
        if file_name not in self._reported:
            self._reported.add(file_name)
            logger.warning(f"Skipping training image {file_name}: {reason}")
        if self._consecutive_failures >= self.max_consecutive_failures:
            raise RuntimeError(
                f"{self._consecutive_failures} training samples in a row could not be mapped (last: "
                f"{file_name}: {reason}); the dataset or the data pipeline is broken."
            )

    def _map(self, dataset_dict: Dict) -> Dict:
        """DatasetMapper.__call__ with robust image reading and annotation repair."""
        file_name = dataset_dict["file_name"]
        image = read_image_robust(file_name, format=self.image_format)
        height, width = image.shape[:2]
        expected = (dataset_dict.get("width", width), dataset_dict.get("height", height))
        if expected != (width, height):
            raise BadImageError(
                file_name,
                f"decoded size {width}x{height} differs from the {expected[0]}x{expected[1]} recorded in the "
                "dataset (annotations made without EXIF rotation, or a replaced file?)",
            )
        dataset_dict.setdefault("width", width)
        dataset_dict.setdefault("height", height)

        if "sem_seg_file_name" in dataset_dict:
            label_file = dataset_dict.pop("sem_seg_file_name")
            sem_seg_gt = read_label_map(label_file)
            if sem_seg_gt.shape != (height, width):
                raise BadImageError(
                    label_file, f"label size {sem_seg_gt.shape[1]}x{sem_seg_gt.shape[0]} differs from its image's {width}x{height}"
                )
        else:
            sem_seg_gt = None
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            dataset_dict["annotations"] = self._repair_annotations(dataset_dict["annotations"], height, width)
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _repair_annotations(self, annotations: List[Dict], height: int, width: int) -> List[Dict]:
        """Clip boxes to the image and drop what cannot be trained on (see the module docstring).
        Crowd annotations are dropped too, as DatasetMapper does."""
        kept = []
        for obj in annotations:
            if obj.get("iscrowd", 0) or not _is_finite_sequence(obj.get("bbox"), 4):
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(map(float, obj["bbox"])), obj["bbox_mode"], BoxMode.XYXY_ABS)
            x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
            y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
            if x1 <= x0 or y1 <= y0:
                continue
            obj["bbox"], obj["bbox_mode"] = [x0, y0, x1, y1], BoxMode.XYXY_ABS
            if self.use_instance_mask:
                segm = obj.get("segmentation")
                if isinstance(segm, list):
                    segm = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0 and _is_finite_sequence(p)]
                    if not segm:
                        continue
                    obj["segmentation"] = segm
                elif not isinstance(segm, dict):
                    continue
            kept.append(obj)
        if len(kept) < len(annotations):
            logger.debug(f"Dropped {len(annotations) - len(kept)} of {len(annotations)} annotations")
        return kept
