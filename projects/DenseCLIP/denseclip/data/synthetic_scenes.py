"""Drawing one synthetic scene: shapes of a vocabulary's classes on a textured, noisy background.

Scenes are drawn on textured, noisy backgrounds with partial occlusions; an object's visible part
is known exactly (the ``owner`` map), so masks of occluded objects cover only what can be seen, as in
real COCO annotations. Everything is drawn from one ``numpy.random.Generator``: a scene depends only
on the generator's state, the vocabulary, the layout and the image size.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from .synthetic_classes import COLOUR_RGB, UNIT_POLYGONS

# An object less visible than this (fraction of its own shape) would be an unfair target: the
# placement that would occlude it that much is rejected, so no unlabelled fragment ever remains.
MIN_VISIBLE_FRACTION = 0.3
# Visible fragments smaller than this (pixels, contour area) cannot make a useful polygon.
MIN_FRAGMENT_AREA = 12.0


@dataclass(frozen=True)
class SceneLayout:
    """How many objects a scene holds, and their extent as a fraction of the image side."""

    min_objects: int = 1
    max_objects: int = 6
    min_extent: float = 0.15
    max_extent: float = 0.45


# The detection / segmentation datasets' scenes.
DETECTION_LAYOUT = SceneLayout()


@dataclass
class SceneObject:
    class_index: int  # index into the scene's vocabulary
    full_mask: np.ndarray  # bool (H, W): the whole shape, as if nothing occluded it
    colour: np.ndarray  # float32 (3,) RGB

    @property
    def full_area(self) -> int:
        return int(self.full_mask.sum())


def _sample_object(
    rng: np.random.Generator, size: int, cells: Sequence[Tuple[int, int]], layout: SceneLayout
) -> SceneObject:
    """A random shape of a random class, rotated, scaled to the layout's extent, inside the image."""
    class_index = int(rng.integers(len(cells)))
    colour_index, shape_index = cells[class_index]
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = UNIT_POLYGONS[shape_index] @ rot.T
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    extent = rng.uniform(layout.min_extent, layout.max_extent) * size
    pts *= extent / max(np.ptp(pts, axis=0).max(), 1e-6)
    lo, hi = -pts.min(0), size - 1 - pts.max(0)
    pts += rng.uniform(lo, hi)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    colour = np.clip(COLOUR_RGB[colour_index] + rng.integers(-25, 26, 3), 0, 255)
    return SceneObject(class_index, mask.astype(bool), colour.astype(np.float32))


def is_polygon_clean(visible: np.ndarray) -> bool:
    """Whether a visible mask is exactly representable by COCO polygons: no holes (a polygon
    cannot have one), and no fragment too small to make a polygon."""
    contours, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0, :, 3] != -1).any():
        return False
    return all(len(c) >= 3 and cv2.contourArea(c) >= MIN_FRAGMENT_AREA for c in contours)


def place_objects(
    rng: np.random.Generator,
    size: int,
    cells: Sequence[Tuple[int, int]],
    layout: SceneLayout = DETECTION_LAYOUT,
) -> Tuple[List[SceneObject], np.ndarray]:
    """Stack random objects of the vocabulary ``cells`` back to front; returns them and the map of
    which one (1-based) is visible at each pixel (0 = background).

    A candidate drawn over earlier objects is rejected when it would leave one of them less than
    MIN_VISIBLE_FRACTION visible or not representable by polygons, so every drawn pixel of an
    object belongs to its annotation.
    """
    target = int(rng.integers(layout.min_objects, layout.max_objects + 1))
    objects: List[SceneObject] = []
    owner = np.zeros((size, size), np.int16)
    for _ in range(10 * target):
        if len(objects) == target:
            break
        cand = _sample_object(rng, size, cells, layout)
        new_owner = owner.copy()
        new_owner[cand.full_mask] = len(objects) + 1
        occluded = np.unique(owner[cand.full_mask])
        ok = True
        for k in occluded[occluded > 0]:
            visible = new_owner == k
            if visible.sum() < MIN_VISIBLE_FRACTION * objects[k - 1].full_area or not is_polygon_clean(visible):
                ok = False
                break
        if ok:
            objects.append(cand)
            owner = new_owner
    return objects, owner


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A desaturated, textured, noisy background (float32 RGB), so that shapes are not trivially
    separable by thresholding and colour stays the objects' cue."""
    base = rng.uniform(60, 170) + rng.uniform(-15, 15, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    # Low-frequency colour blotches.
    coarse = rng.normal(0, 1, (6, 6, 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 30)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    texture = int(rng.integers(3))
    if texture == 0:  # stripes at a random angle and frequency
        a = rng.uniform(0, np.pi)
        img += (np.sin((xx * np.cos(a) + yy * np.sin(a)) * rng.uniform(10, 60)) * rng.uniform(6, 18))[..., None]
    elif texture == 1:  # checkerboard
        n = int(rng.integers(4, 16))
        img += (((np.floor(xx * n) + np.floor(yy * n)) % 2 - 0.5) * rng.uniform(10, 30))[..., None]
    else:  # fine grain
        grain = rng.normal(0, 1, (size // 4, size // 4)).astype(np.float32)
        img += (cv2.resize(grain, (size, size), interpolation=cv2.INTER_LINEAR) * rng.uniform(8, 20))[..., None]
    # A few grey distractor lines.
    for _ in range(int(rng.integers(0, 4))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        grey = float(rng.uniform(30, 220))
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (grey, grey, grey), int(rng.integers(1, 4)))
    return img


def render_scene(rng: np.random.Generator, size: int, objects: List[SceneObject], owner: np.ndarray) -> np.ndarray:
    """Paint the scene (uint8 RGB): background, then every object's visible part with a shading
    gradient, then a slight blur and sensor noise."""
    img = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for k, obj in enumerate(objects, start=1):
        visible = owner == k
        a = rng.uniform(0, 2 * np.pi)
        # Linear shading of at most +-20% across the image, in a random direction.
        shade = 1.0 + rng.uniform(0.05, 0.14) * 2 * ((xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a))
        img[visible] = obj.colour * shade[visible][:, None]
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_scene(
    rng: np.random.Generator,
    size: int,
    cells: Sequence[Tuple[int, int]],
    layout: SceneLayout = DETECTION_LAYOUT,
) -> Tuple[np.ndarray, List[SceneObject], np.ndarray]:
    """A whole scene: (uint8 RGB image, its objects back to front, the 1-based owner map)."""
    objects, owner = place_objects(rng, size, cells, layout)
    return render_scene(rng, size, objects, owner), objects, owner


def label_map(objects: List[SceneObject], owner: np.ndarray) -> np.ndarray:
    """uint8 semantic labels of a scene: 1 + class index of the visible object, 0 = background."""
    classes = np.array([0] + [obj.class_index + 1 for obj in objects], dtype=np.uint8)
    return classes[owner]
