"""Image-caption pairs and single-object crops of the synthetic shapes, for pretraining a small CLIP.

* :func:`caption_pairs`: scenes of 1-3 objects of a vocabulary (by default the whole 8 x 8 grid),
  each with a caption naming its objects from left to right: "a red circle, a green star and a blue
  square". What a CLIP learns from them is the language of the grid: colours and shapes.
* :func:`object_crops`: square crops around single objects of the detection datasets' kind of scene
  (256 pixels, up to 6 objects, occlusions), balanced over the classes, for the zero-shot check.

Both are seeded and drawn from their own random streams (``STREAMS``), apart from each other and from
the detection datasets' train/val streams (0 and 1), so crops are never among the training pairs.
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .synthetic_classes import SYNTHETIC_GRID_CLASSES, grid_cells
from .synthetic_scenes import DETECTION_LAYOUT, SceneLayout, SceneObject, draw_scene

# Random streams: np.random.default_rng([seed, stream, index]) draws item ``index`` of a stream.
STREAMS = {"caption_pairs": 2, "object_crops": 3}
# The pairs' scenes: few, large objects, so the caption describes the whole picture and the objects
# are big enough at the small CLIP's input size to show their shapes.
CAPTION_LAYOUT = SceneLayout(min_objects=1, max_objects=3, min_extent=0.3, max_extent=0.6)
# A crop shows at least this fraction of its object (the rest hidden by other objects), so that its
# shape can be told.
MIN_CROP_VISIBLE_FRACTION = 0.8
# Context around an object's box in its crop, as a fraction of the box's longer side on each side.
CROP_MARGIN = 0.15


def object_phrase(name: str) -> str:
    """"a red circle", "an orange star": one object, as captions and zero-shot prompts name it."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def caption(names: Sequence[str]) -> str:
    """English caption of named objects: "a red circle", "a red circle and a blue square",
    "a red circle, a green star and a blue square"."""
    if not names:
        raise ValueError("caption: a scene without objects has no caption")
    parts = [object_phrase(n) for n in names]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_caption(objects: Sequence[SceneObject], owner: np.ndarray, classes: Sequence[str]) -> str:
    """The caption of a drawn scene: its objects from left to right (by the centre of their visible part)."""
    centres = []
    for k, obj in enumerate(objects, start=1):
        xs = np.nonzero(owner == k)[1]
        centres.append((float(xs.mean()), k - 1))
    return caption([classes[objects[i].class_index] for _, i in sorted(centres)])


def caption_pairs(
    count: int,
    image_size: int = 96,
    seed: int = 0,
    classes: Optional[Sequence[str]] = None,
    start: int = 0,
) -> List[Tuple[np.ndarray, str]]:
    """Pairs ``start`` to ``start + count - 1`` of the caption stream: (uint8 RGB image of
    ``image_size`` pixels, caption). ``classes`` defaults to the whole grid."""
    classes = list(classes or SYNTHETIC_GRID_CLASSES)
    cells = grid_cells(classes)
    pairs = []
    for index in range(start, start + count):
        rng = np.random.default_rng([seed, STREAMS["caption_pairs"], index])
        image, objects, owner = draw_scene(rng, image_size, cells, CAPTION_LAYOUT)
        pairs.append((image, scene_caption(objects, owner, classes)))
    return pairs


def _square_crop(image: np.ndarray, visible: np.ndarray, crop_size: int) -> np.ndarray:
    """The object's box grown by CROP_MARGIN to a square (clipped to the image), resized."""
    ys, xs = np.nonzero(visible)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0) * (1 + 2 * CROP_MARGIN)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = visible.shape
    top, left = int(max(0, round(cy - side / 2))), int(max(0, round(cx - side / 2)))
    bottom, right = int(min(h, round(cy + side / 2))), int(min(w, round(cx + side / 2)))
    return cv2.resize(image[top:bottom, left:right], (crop_size, crop_size), interpolation=cv2.INTER_AREA)


def object_crops(
    per_class: int,
    crop_size: int = 96,
    seed: int = 0,
    classes: Optional[Sequence[str]] = None,
    image_size: int = 256,
) -> List[Tuple[np.ndarray, int]]:
    """``per_class`` crops of every class (uint8 RGB ``crop_size`` squares, class index into
    ``classes``, default the whole grid), cut from detection-style scenes of the crop stream; objects
    less than MIN_CROP_VISIBLE_FRACTION visible are skipped. Ordered by class, then by scene."""
    classes = list(classes or SYNTHETIC_GRID_CLASSES)
    cells = grid_cells(classes)
    crops: List[List[np.ndarray]] = [[] for _ in classes]
    index = 0
    while any(len(c) < per_class for c in crops):
        rng = np.random.default_rng([seed, STREAMS["object_crops"], index])
        image, objects, owner = draw_scene(rng, image_size, cells, DETECTION_LAYOUT)
        for k, obj in enumerate(objects, start=1):
            visible = owner == k
            if len(crops[obj.class_index]) < per_class and visible.sum() >= MIN_CROP_VISIBLE_FRACTION * obj.full_area:
                crops[obj.class_index].append(_square_crop(image, visible, crop_size))
        index += 1
    return [(crop, c) for c, class_crops in enumerate(crops) for crop in class_crops]
