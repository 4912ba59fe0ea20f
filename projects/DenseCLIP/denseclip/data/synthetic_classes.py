"""The vocabulary of the synthetic shapes: colours x shapes, each class a plain English name.

Every class is a (colour, shape) pair named "<colour> <shape>" ("red circle"). The full grid of
8 colours x 8 shapes (SYNTHETIC_GRID_CLASSES, 64 classes) is what the image-caption pairs and the
small CLIP's zero-shot check draw from; its diagonal is the 8-class vocabulary of the detection and
semantic segmentation datasets (SYNTHETIC_CLASSES: each class a distinct colour *and* shape, so a
detector trained in a few hundred CPU iterations has an easy, unambiguous task). Splitting the grid
into base and novel classes (every novel class's colour and shape seen among the base classes) is
a matter of picking cells: ``grid_cell(name)`` gives a name's (colour, shape) indices.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

COLOURS: List[str] = ["red", "blue", "green", "yellow", "purple", "orange", "white", "pink"]
SHAPES: List[str] = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart"]

# RGB base colour of each colour name (index-aligned with COLOURS); objects get +-25 per channel of
# jitter and shading around it.
COLOUR_RGB = np.array(
    [
        (220, 35, 35),
        (35, 75, 220),
        (35, 170, 55),
        (240, 215, 35),
        (140, 50, 190),
        (250, 140, 25),
        (245, 245, 245),
        (250, 115, 185),
    ],
    dtype=np.float32,
)


def class_name(colour: int, shape: int) -> str:
    """The name of grid cell (colour index, shape index), e.g. (0, 0) -> "red circle"."""
    return f"{COLOURS[colour]} {SHAPES[shape]}"


# The full grid, row by colour: "red circle", "red square", ..., "pink heart".
SYNTHETIC_GRID_CLASSES: List[str] = [class_name(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
# The detection / semantic segmentation vocabulary: the grid's diagonal, in this order (the COCO
# category ids 1-8 of the generated datasets).
SYNTHETIC_CLASSES: List[str] = [class_name(i, i) for i in range(len(COLOURS))]
# Classes of the semantic label maps: the background, then the shapes, so that label value = the
# shape's COCO category id.
SYNTHETIC_SEM_SEG_CLASSES: List[str] = ["background", *SYNTHETIC_CLASSES]

_CELLS: Dict[str, Tuple[int, int]] = {
    class_name(c, s): (c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))
}


def grid_cell(name: str) -> Tuple[int, int]:
    """(colour index, shape index) of a class name of the grid; a clear error for any other name."""
    try:
        return _CELLS[name]
    except KeyError:
        raise ValueError(
            f"synthetic class {name!r} is not '<colour> <shape>' with a colour of {COLOURS} and a shape of {SHAPES}"
        ) from None


def grid_cells(names: Sequence[str]) -> List[Tuple[int, int]]:
    """The grid cells of a vocabulary, checked to hold no name twice."""
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic classes must be distinct, got {list(names)}")
    if not names:
        raise ValueError("synthetic classes: the vocabulary is empty")
    return [grid_cell(n) for n in names]


def unit_polygon(shape: int) -> np.ndarray:
    """Outline of shape ``shape`` (index into SHAPES) as (N, 2) points inside the unit disc, centred on 0."""
    if shape == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == 1:  # square
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == 2:  # equilateral triangle
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == 3:  # five-pointed star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == 4:  # hexagon
        t = np.arange(6) * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == 5:  # diamond (elongated rhombus, so it never looks like a square)
        return np.array([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)])
    if shape == 6:  # plus-shaped cross
        a = 0.33
        return np.array(
            [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
             (-1, -a), (-a, -a)],
            dtype=np.float64,
        )
    if shape == 7:  # heart (classic parametric curve, y pointing down in image coordinates)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / np.abs(pts).max()
    raise ValueError(f"no shape with index {shape}")


UNIT_POLYGONS = [unit_polygon(i) for i in range(len(SHAPES))]
