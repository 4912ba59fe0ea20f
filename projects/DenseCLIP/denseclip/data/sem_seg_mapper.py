"""The semantic segmentation data pipeline of the reference (mmseg 0.19) with Detectron2's pieces.

Training, in the reference's order (its ``train_pipeline``): random resize by a ratio of a
(long, short) scale, random crop whose largest class covers at most a fraction of the labelled
pixels, horizontal flip, photometric distortion, padding to the crop size (labels 255; the image
after normalisation 0, i.e. the pixel mean before it, since the model normalises).

=========================================  ============================================================
mmseg 0.19                                 here (config keys)
=========================================  ============================================================
Resize(img_scale=(2048, 512),              :class:`ResizeByRatio`: INPUT.MAX_SIZE_TRAIN 2048, INPUT.MIN_SIZE_TRAIN (512,),
ratio_range=(0.5, 2.0))                    INPUT.RESIZE_RATIO_RANGE (0.5, 2.0)
RandomCrop(512, cat_max_ratio=0.75)        Detectron2's RandomCrop_CategoryAreaConstraint: INPUT.CROP.ENABLED, TYPE
                                           "absolute", SIZE (512, 512), SINGLE_CATEGORY_MAX_AREA 0.75 (ignore label excluded)
RandomFlip(prob=0.5)                       Detectron2's RandomFlip: INPUT.RANDOM_FLIP "horizontal"
PhotoMetricDistortion()                    Detectron2's ColorAugSSDTransform (PointRend's port of the same SSD
                                           distortion: brightness +-32, contrast and saturation x0.5-1.5, hue +-18):
                                           INPUT.COLOR_AUG_SSD True
Normalize, then Pad(size=crop, pad_val=0,  :class:`PadToSize` (when the crop is "absolute"): the image (float32) with
seg_pad_val=255)                           MODEL.PIXEL_MEAN, the labels with MODEL.SEM_SEG_HEAD.IGNORE_VALUE
test: Resize((2048, 512), keep_ratio)      Detectron2's ResizeShortestEdge(INPUT.MIN_SIZE_TEST 512, INPUT.MAX_SIZE_TEST 2048)
=========================================  ============================================================

Normalisation (CLIP's mean and std) happens in the model, as everywhere in Detectron2.
"""
from typing import Dict, List, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.projects.point_rend.color_augmentation import ColorAugSSDTransform
from PIL import Image

from .mapper import RobustDatasetMapper

__all__ = ["PadToSize", "ResizeByRatio", "SemSegDatasetMapper", "build_sem_seg_augmentations"]


class ResizeByRatio(T.Augmentation):
    """Keep-ratio resize to a randomly scaled (long, short) target, as mmseg's ``Resize`` with
    ``ratio_range``: r ~ U(ratio_range); the target (int(max_size r), int(short_edge r)) is then
    fitted like ``ResizeShortestEdge`` (short side to short_edge r unless the long side would
    exceed max_size r)."""

    def __init__(self, short_edge: int, max_size: int, ratio_range: Tuple[float, float], interp: int = Image.BILINEAR):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        newh, neww = T.ResizeShortestEdge.get_output_shape(
            h, w, int(self.short_edge * ratio), int(self.max_size * ratio)
        )
        return T.ResizeTransform(h, w, newh, neww, self.interp)


class _PadBottomRight(T.Transform):
    """Pad an image (to float32, per-channel ``pixel``) and its labels (``seg_value``) at the
    bottom and right to ``height`` x ``width``; coordinates do not move."""

    def __init__(self, height: int, width: int, pixel: Tuple[float, ...], seg_value: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        out = np.empty((self.height, self.width, *img.shape[2:]), np.float32)
        out[...] = np.asarray(self.pixel, np.float32)
        out[:h, :w] = img
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        h, w = segmentation.shape[:2]
        return np.pad(segmentation, ((0, self.height - h), (0, self.width - w)), constant_values=self.seg_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords


class PadToSize(T.Augmentation):
    """mmseg's ``Normalize`` then ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``, for a model
    that normalises itself: pad bottom and right to at least ``size`` (h, w), the image with
    ``pixel`` (the model's PIXEL_MEAN, which normalises to 0; the image becomes float32 so the
    value is exact), the labels with ``seg_pad_value`` (the ignore label)."""

    def __init__(self, size: Tuple[int, int], pixel: Tuple[float, ...], seg_pad_value: int = 255):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        return _PadBottomRight(max(self.size[0], h), max(self.size[1], w), tuple(self.pixel), self.seg_pad_value)


def _check_input_config(cfg: CfgNode) -> None:
    """The keys the ratio resize reads, with errors that name them."""
    if len(cfg.INPUT.MIN_SIZE_TRAIN) != 1:
        raise ValueError(
            f"INPUT.MIN_SIZE_TRAIN must hold one short-side length for semantic segmentation (the scale that "
            f"INPUT.RESIZE_RATIO_RANGE multiplies), got {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}"
        )
    ratios = tuple(cfg.INPUT.RESIZE_RATIO_RANGE)
    if len(ratios) != 2 or not 0 < ratios[0] <= ratios[1]:
        raise ValueError(f"INPUT.RESIZE_RATIO_RANGE must be (low, high) with 0 < low <= high, got {ratios}")
    if cfg.INPUT.RANDOM_FLIP not in ("none", "horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {cfg.INPUT.RANDOM_FLIP!r}")


def build_sem_seg_augmentations(cfg: CfgNode, is_train: bool) -> List:
    """The reference's training pipeline (see the module docstring) or its test-time resize."""
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST == 0:
            return []
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    _check_input_config(cfg)
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    augs: List = [ResizeByRatio(cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN, tuple(cfg.INPUT.RESIZE_RATIO_RANGE))]
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(crop.TYPE, tuple(crop.SIZE), crop.SINGLE_CATEGORY_MAX_AREA, ignore)
        )
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    if crop.ENABLED and crop.TYPE == "absolute":
        augs.append(PadToSize(tuple(crop.SIZE), tuple(cfg.MODEL.PIXEL_MEAN), ignore))
    return augs


class SemSegDatasetMapper(RobustDatasetMapper):
    """``RobustDatasetMapper`` (bad samples skipped in training) with the semantic segmentation
    pipeline of :func:`build_sem_seg_augmentations`. Outputs "image" (uint8 C x H x W) and, where
    the record has a label file, "sem_seg" (int64 H x W, 255 = ignore). "image" is uint8 C x H x W,
    float32 in training with padding to the crop size (see :class:`PadToSize`)."""

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_sem_seg_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }
