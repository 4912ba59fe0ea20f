"""Drawing DenseCLIP's outputs with Detectron2's visualizers: detections or semantic segmentations
(``draw_sem_seg``, each pixel's most likely class) of an image (``Visualizer``) or of consecutive
video frames (``VideoVisualizer``: an object keeps its colour), and pixel-text score maps as heat
maps over the image. Images are BGR uint8 H x W x 3 arrays, as
OpenCV reads and writes them."""
from __future__ import annotations

from typing import Dict

import cv2
import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["VideoDrawer", "draw_predictions", "score_map_overlay"]


def draw_predictions(bgr_image: np.ndarray, predictions: Dict, metadata: Metadata) -> np.ndarray:
    """Detections (boxes, labels, scores, masks) or a semantic segmentation ("sem_seg": K x H x W
    scores, drawn as its per-pixel argmax with the class names of ``metadata.stuff_classes``)
    drawn by Detectron2's Visualizer; BGR uint8."""
    visualizer = Visualizer(bgr_image[:, :, ::-1], metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    if "instances" in predictions:
        drawn = visualizer.draw_instance_predictions(predictions["instances"].to("cpu"))
    elif "sem_seg" in predictions:
        drawn = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
    else:
        drawn = visualizer.output
    return drawn.get_image()[:, :, ::-1]


class VideoDrawer:
    """Draws the detections (or semantic segmentations) of consecutive frames of one video with
    Detectron2's VideoVisualizer, which matches instances from frame to frame so that an object
    keeps its colour."""

    def __init__(self, metadata: Metadata):
        self._visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)

    def __call__(self, bgr_frame: np.ndarray, predictions: Dict) -> np.ndarray:
        rgb = np.ascontiguousarray(bgr_frame[:, :, ::-1])
        if "instances" in predictions:
            drawn = self._visualizer.draw_instance_predictions(rgb, predictions["instances"].to("cpu"))
            return np.ascontiguousarray(drawn.get_image()[:, :, ::-1])
        if "sem_seg" in predictions:
            drawn = self._visualizer.draw_sem_seg(rgb, predictions["sem_seg"].argmax(dim=0).to("cpu"))
            return np.ascontiguousarray(drawn.get_image()[:, :, ::-1])
        return np.ascontiguousarray(bgr_frame)


def score_map_overlay(bgr_image: np.ndarray, probability: np.ndarray, alpha: float = 0.5, label: str = "") -> np.ndarray:
    """A JET heat map of an H x W probability map blended with the BGR image (H x W x 3 uint8)."""
    heat = cv2.applyColorMap(np.clip(probability * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(np.ascontiguousarray(bgr_image), 1.0 - alpha, heat, alpha, 0.0)
    if label:
        scale = max(0.4, min(bgr_image.shape[:2]) / 600.0)
        thickness = max(1, int(round(scale * 2)))
        origin = (5, 5 + int(20 * scale))
        cv2.putText(overlay, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(overlay, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return overlay
