#!/usr/bin/env python
"""Run an ONNX export of tools/deploy/export_model.py on a photo with ONNX Runtime, NumPy and
Pillow only (no PyTorch, torchvision, Detectron2 or this project's package):

    pip install onnxruntime numpy pillow
    python tools/deploy/onnx_infer.py --model export/mask_rcnn --input photo.jpg --output photo.json

Writes the predictions as JSON and draws them on the photo (``--draw``, default: the output's name
with .png). The export's ``model.onnx`` goes from pixels to detections; this script does what
Detectron2's predictor does around the model, with the same arithmetic: read the photo (EXIF
orientation applied), resize it (ResizeShortestEdge to INPUT.MIN/MAX_SIZE_TEST, Pillow bilinear, as
Detectron2), run the graph, scale the boxes back to the photo and clip them (``detector_postprocess``),
paste each detection's mask probabilities into its box (bilinear, as Detectron2's
``paste_masks_in_image``) and threshold them at 0.5. Segmentation exports run the graph once per
view (whole image, sliding windows, scales, flips: the export's TEST.SEM_SEG) and average as the
model does.

JSON: ``{"image", "height", "width", "class_names", "detections": [{"box": [x1, y1, x2, y2],
"score", "class", "label", "mask": {"size": [h, w], "counts": [...]}}]}`` (masks: COCO's
uncompressed RLE, column-major, starting with a run of 0s; ``pycocotools.mask.frPyObjects`` reads it);
for segmentation ``{"sem_seg": {"labels": FILE.png, "classes": {label: pixel fraction}}}`` with the
label map (class index per pixel) written next to the JSON.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageOps

MANIFEST = "denseclip_export.json"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR", help="an ONNX export folder (tools/deploy/export_model.py --format onnx)")
    parser.add_argument("--input", required=True, metavar="IMAGE", help="a photo (any format Pillow reads)")
    parser.add_argument("--output", required=True, metavar="OUT.json", help="the predictions, as JSON")
    parser.add_argument("--draw", metavar="FILE", help="the drawing (default: --output with .png)")
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="detectors: keep scores above this (at least the export's threshold; default: the export's)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: its own choice)")
    return parser


class ExportError(Exception):
    """A folder that is not an end-to-end ONNX export, or a threshold it cannot give."""


# ------------------------------------------------------------------------------------------ input
def read_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB, EXIF orientation applied (Detectron2's ``read_image``)."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()


def test_size(height: int, width: int, short: int, max_size: int) -> Tuple[int, int]:
    """Detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = short * 1.0 / min(height, width)
    new_h, new_w = (short * 1.0, scale * width) if height < width else (scale * height, short * 1.0)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_for_test(image: np.ndarray, preprocess: Dict) -> np.ndarray:
    """Detectron2's ``ResizeTransform.apply_image`` for uint8 images: Pillow bilinear."""
    height, width = image.shape[:2]
    if not preprocess["min_size_test"]:
        return image
    new_h, new_w = test_size(height, width, preprocess["min_size_test"], preprocess["max_size_test"])
    if (new_h, new_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


# -------------------------------------------------------------------------------- the ONNX graph
class Export:
    """An end-to-end ONNX export: its manifest and an ONNX Runtime session of ``model.onnx``."""

    def __init__(self, folder: str, threads: int = 0):
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise ExportError(f"'{folder}' is not a DenseCLIP export: {path} is missing (tools/deploy/export_model.py)")
        with open(path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("layout") != "end_to_end":
            raise ExportError(f"'{folder}' was exported with --format {self.manifest['format']}: this runner takes "
                              "--format onnx exports (one graph, pixels to outputs)")
        try:
            import onnxruntime
        except ImportError as e:
            raise ExportError("running an ONNX export needs ONNX Runtime: pip install onnxruntime numpy pillow") from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: not the constants its graph optimizer drops
        graph = self.manifest["graphs"]["model"]
        self.session = onnxruntime.InferenceSession(os.path.join(folder, graph["file"]), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name, self.output_names = graph["inputs"][0], graph["outputs"]
        self.dtype = np.dtype(self.manifest["input"]["dtype"])

    @property
    def class_names(self) -> List[str]:
        return list(self.manifest["class_names"])

    @property
    def segmentation(self) -> bool:
        return "sem_seg" in self.manifest

    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(image, dtype=self.dtype)}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


# --------------------------------------------------------------------------------------- detectors
def detect(export: Export, photo: np.ndarray, threshold: Optional[float] = None) -> Dict[str, np.ndarray]:
    """Detections in the photo's pixels: ``boxes`` (N x 4), ``scores``, ``classes`` and, for Mask
    R-CNN, ``masks`` (N x H x W bool)."""
    exported = export.manifest["score_threshold"]
    if threshold is not None and threshold < exported:
        raise ExportError(f"--confidence-threshold {threshold}: the export keeps scores above {exported}; export again")
    image = resize_for_test(photo, export.manifest["preprocess"])
    out = export(image)
    keep = out["scores"] > threshold if threshold is not None and threshold > exported else slice(None)
    boxes, scores, classes = out["boxes"][keep], out["scores"][keep], out["classes"][keep]
    # detector_postprocess: scale to the photo, clip, drop empty boxes, paste the masks.
    (height, width), (h, w) = photo.shape[:2], image.shape[:2]
    boxes = boxes * np.array([width / w, height / h] * 2, dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {"boxes": boxes[nonempty], "scores": scores[nonempty], "classes": classes[nonempty]}
    if "mask_probs" in out:
        threshold_mask = export.manifest["mask_threshold"]
        probs = out["mask_probs"][keep][nonempty]
        result["masks"] = np.stack([paste_mask(p, b, height, width) >= threshold_mask for p, b in zip(probs, result["boxes"])]) \
            if len(probs) else np.zeros((0, height, width), dtype=bool)
    return result


def _bilinear_taps(coords: np.ndarray, size: int) -> np.ndarray:
    """len(coords) x size weights of bilinear sampling at ``coords`` (input pixel units, centres at
    integers) with zero padding: ``grid_sample``'s, as a matrix."""
    weights = np.zeros((len(coords), size), dtype=np.float32)
    low = np.floor(coords).astype(np.int64)
    frac = (coords - low).astype(np.float32)
    rows = np.arange(len(coords))
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < size)
        weights[rows[inside], index[inside]] += weight[inside]
    return weights


def paste_mask(probs: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """An M x M mask of probabilities pasted into ``box`` of a height x width image: Detectron2's
    ``_do_paste_mask`` (``grid_sample``, align_corners=False, zero outside), within the box's
    pixels plus one, zero elsewhere."""
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    m_h, m_w = probs.shape
    # Pixel centres -> [-1, 1] over the box -> the mask's pixel coordinates (align_corners=False).
    gy = (np.arange(top, bottom, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0) * 2 - 1
    gx = (np.arange(left, right, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0) * 2 - 1
    rows = _bilinear_taps(((gy + 1) * m_h - 1) / 2, m_h)
    cols = _bilinear_taps(((gx + 1) * m_w - 1) / 2, m_w)
    pasted = np.zeros((height, width), dtype=np.float32)
    pasted[top:bottom, left:right] = rows @ probs.astype(np.float32) @ cols.T
    return pasted


# ------------------------------------------------------------------------------------ segmentation
def resize_bilinear(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """C x H x W -> C x size: PyTorch's ``interpolate(mode="bilinear", align_corners=False)``."""
    def taps(out_size: int, in_size: int) -> np.ndarray:
        src = ((np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(in_size / out_size) - 0.5).clip(min=0)
        low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        frac = (src - low).astype(np.float32)
        weights = np.zeros((out_size, in_size), dtype=np.float32)
        weights[np.arange(out_size), low] += 1 - frac
        weights[np.arange(out_size), high] += frac
        return weights

    if tuple(array.shape[-2:]) == tuple(size):
        return array
    rows, cols = taps(size[0], array.shape[-2]), taps(size[1], array.shape[-1])
    return np.einsum("oh,chw,pw->cop", rows, array.astype(np.float32), cols, optimize=True)


def sliding_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """The model's windows (denseclip.modeling.slide_inference.sliding_windows): y1, y2, x1, x2."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * h_stride + h_crop, height), min(j * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def segment_view(export: Export, view: np.ndarray) -> np.ndarray:
    """K x h x w logits of an h x w x 3 float view: the graph on the view, or on sliding windows."""
    views = export.manifest["sem_seg"]
    if views["mode"] != "slide":
        return export(view)["sem_seg"][0]
    height, width = view.shape[:2]
    logits, count = None, np.zeros((height, width), dtype=np.float32)
    for y1, y2, x1, x2 in sliding_windows(height, width, views["crop_size"], views["stride"]):
        window = export(view[y1:y2, x1:x2])["sem_seg"][0]
        logits = np.zeros((window.shape[0], height, width), dtype=np.float32) if logits is None else logits
        logits[:, y1:y2, x1:x2] += window
        count[y1:y2, x1:x2] += 1
    return logits / count


def segment(export: Export, photo: np.ndarray) -> np.ndarray:
    """K x H x W: logits (one view) or class probabilities averaged over scales and flips."""
    views = export.manifest["sem_seg"]
    image = resize_for_test(photo, export.manifest["preprocess"]).astype(np.float32)
    height, width = photo.shape[:2]
    h, w = image.shape[:2]
    if list(views["scales"]) == [1.0] and not views["flip"]:
        return resize_bilinear(segment_view(export, image), (height, width))
    total = 0.0
    for scale in views["scales"]:
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        scaled = resize_bilinear(image.transpose(2, 0, 1), size).transpose(1, 2, 0)
        for mirrored in (False, True) if views["flip"] else (False,):
            logits = segment_view(export, np.ascontiguousarray(scaled[:, ::-1] if mirrored else scaled))
            logits = resize_bilinear(logits[:, :, ::-1] if mirrored else logits, (height, width))
            exp = np.exp(logits - logits.max(axis=0, keepdims=True))
            total = total + exp / exp.sum(axis=0, keepdims=True)
    return total / (len(views["scales"]) * (2 if views["flip"] else 1))


# -------------------------------------------------------------------------------- output, drawing
def rle(mask: np.ndarray) -> Dict:
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, 0s first."""
    flat = mask.flatten(order="F")
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], boundaries, [len(flat)]])).tolist()
    if len(flat) and flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def colour(index: int) -> Tuple[int, int, int]:
    rng = np.random.default_rng(index)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def draw_detections(photo: np.ndarray, result: Dict[str, np.ndarray], names: Sequence[str]) -> Image.Image:
    canvas = photo.astype(np.float32)
    for mask, cls in zip(result.get("masks", []), result["classes"]):
        canvas[mask] = canvas[mask] * 0.5 + np.array(colour(int(cls)), dtype=np.float32) * 0.5
    image = Image.fromarray(canvas.astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for box, score, cls in zip(result["boxes"], result["scores"], result["classes"]):
        pen.rectangle([float(v) for v in box], outline=colour(int(cls)), width=2)
        pen.text((float(box[0]) + 2, float(box[1]) + 1), f"{names[int(cls)]} {score:.2f}", fill=colour(int(cls)))
    return image


def draw_segmentation(photo: np.ndarray, labels: np.ndarray) -> Image.Image:
    palette = np.array([colour(i) for i in range(int(labels.max()) + 1)], dtype=np.float32)
    return Image.fromarray((photo.astype(np.float32) * 0.5 + palette[labels] * 0.5).astype(np.uint8))


def run(args: argparse.Namespace) -> Dict:
    export = Export(args.model, args.threads)
    photo = read_rgb(args.input)
    height, width = photo.shape[:2]
    report: Dict = {"image": args.input, "height": height, "width": width, "class_names": export.class_names}
    names = export.class_names
    if export.segmentation:
        labels = segment(export, photo).argmax(axis=0).astype(np.uint8 if len(names) <= 256 else np.uint16)
        labels_path = os.path.splitext(args.output)[0] + "_labels.png"
        Image.fromarray(labels).save(labels_path)
        present, counts = np.unique(labels, return_counts=True)
        report["sem_seg"] = {"labels": labels_path,
                             "classes": {names[int(c)]: round(float(n) / labels.size, 6) for c, n in zip(present, counts)}}
        drawing = draw_segmentation(photo, labels)
    else:
        result = detect(export, photo, args.confidence_threshold)
        report["detections"] = [
            {"box": [float(v) for v in box], "score": float(score), "class": int(cls), "label": names[int(cls)],
             **({"mask": rle(result["masks"][i])} if "masks" in result else {})}
            for i, (box, score, cls) in enumerate(zip(result["boxes"], result["scores"], result["classes"]))
        ]
        drawing = draw_detections(photo, result, names)
    with open(args.output, "w") as f:
        json.dump(report, f)
    drawing.save(args.draw or os.path.splitext(args.output)[0] + ".png")
    return report


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        report = run(args)
    except (ExportError, FileNotFoundError, OSError) as e:
        sys.exit(f"onnx_infer.py: error: {e}")
    found = len(report["detections"]) if "detections" in report else len(report["sem_seg"]["classes"])
    print(f"{args.input}: {found} {'detections' if 'detections' in report else 'classes'} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
