"""Export a DenseCLIP model to a folder of graphs and a manifest (``denseclip_export.json``) that
names the class names, the graphs, their inputs and outputs, and what a runner needs around them
(``preprocess``: test-time resize, input format; ``sem_seg``: test-time views), next to the config
(``config.yaml``).

``--format onnx`` writes one graph, ``model.onnx``, from pixels to final outputs
(:mod:`.end_to_end`, :mod:`.onnx_export`): the manifest's ``layout`` is "end_to_end".
torch.export and traced TorchScript write the network parts (:mod:`.graphs`; layout "parts"), with
post-processing in the runner: their image sides are multiples of the backbone's size divisibility
(32) between 64 px and ``max_side`` (the positional grid's limit for the paper's "grid_crop" models,
4096 px otherwise); the region count of the ROI-head graphs is dynamic too.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from torch import nn

from .end_to_end import build_end_to_end_graph
from .graphs import (
    IMAGE,
    TEXT,
    BoxHeadGraph,
    LanguageBoxHeadGraph,
    MaskHeadGraph,
    RCNNFeatureGraph,
    RetinaNetGraph,
    SemanticSegmentationGraph,
)
from .onnx_export import export_end_to_end

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torch.export", "torchscript")
EXTENSIONS = {"onnx": ".onnx", "torch.export": ".pt2", "torchscript": ".ts"}
MANIFEST = "denseclip_export.json"
CONFIG = "config.yaml"
# Bounds of the dynamic image sides, in units of the size divisibility.
MIN_SIDE_UNITS = 2
MAX_SIDE_UNITS = 128


@dataclass
class GraphSpec:
    """One graph of an export: the module, example inputs, and names and dynamic dims of its
    inputs (``dynamic``: input name -> {dim: torch.export.Dim})."""

    name: str
    module: nn.Module
    example_inputs: Tuple[torch.Tensor, ...]
    input_names: List[str]
    output_names: List[str]
    dynamic: Dict[str, Dict[int, Any]]


def supported_meta_architectures() -> Tuple[str, ...]:
    return ("DenseCLIPRetinaNet", "DenseCLIPRCNN", "DenseCLIPSemanticSegmentor")


def check_exportable(cfg: CfgNode) -> str:
    """MODEL.META_ARCHITECTURE, if this exporter handles it; else an error naming the choices."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in supported_meta_architectures():
        raise ValueError(
            f"MODEL.META_ARCHITECTURE '{arch}' cannot be exported: expected one of {supported_meta_architectures()}"
        )
    return arch


def max_image_side(cfg: CfgNode, size_divisibility: int = 32) -> int:
    """The largest padded image side the exported graph accepts."""
    if cfg.MODEL.CLIP.POS_EMBED_MODE == "grid_crop":
        return cfg.MODEL.CLIP.POS_EMBED_GRID * size_divisibility
    return MAX_SIDE_UNITS * size_divisibility


def build_graph_specs(model: nn.Module, cfg: CfgNode) -> List[GraphSpec]:
    """The graphs of ``model`` (eval mode) with example inputs on its device."""
    arch = check_exportable(cfg)
    divisor = model.backbone.size_divisibility
    units = max_image_side(cfg, divisor) // divisor
    height, width = torch.export.Dim("height", min=MIN_SIDE_UNITS, max=units), torch.export.Dim("width", min=MIN_SIDE_UNITS, max=units)
    device = next(model.parameters()).device
    # Unequal sides, neither 1 nor a CLIP grid size: the exporters must not specialise on them.
    image = torch.randn(1, 3, 5 * divisor, 6 * divisor, device=device)
    image_dims = {IMAGE: {2: divisor * height, 3: divisor * width}}
    if arch in ("DenseCLIPRetinaNet", "DenseCLIPSemanticSegmentor"):
        graph = (RetinaNetGraph if arch == "DenseCLIPRetinaNet" else SemanticSegmentationGraph)(model).eval()
        return [GraphSpec("model", graph, (image,), [IMAGE], graph.output_names, image_dims)]
    graph = RCNNFeatureGraph(model).eval()
    specs = [GraphSpec("model", graph, (image,), [IMAGE], graph.output_names, image_dims)]
    regions = torch.export.Dim("regions", min=1, max=100_000)
    roi = model.roi_heads
    box = (LanguageBoxHeadGraph if model.language_guided else BoxHeadGraph)(model).eval()
    resolution = roi.box_pooler.output_size
    box_inputs: Tuple[torch.Tensor, ...] = (torch.randn(7, _pooled_channels(model), *resolution, device=device),)
    if box.language_guided:
        box_inputs += (torch.randn(*graph.class_text.shape, device=device),)
    box_dims: Dict[str, Dict[int, Any]] = {"box_features": {0: regions}}
    if box.language_guided:
        box_dims[TEXT] = {}
    specs.append(GraphSpec("box_head", box, box_inputs, box.input_names, box.output_names, box_dims))
    if getattr(roi, "mask_on", False):
        mask = MaskHeadGraph(model).eval()
        mask_inputs = (torch.randn(7, _pooled_channels(model), *roi.mask_pooler.output_size, device=device),)
        specs.append(GraphSpec("mask_head", mask, mask_inputs, mask.input_names, mask.output_names, {"mask_features": {0: regions}}))
    return specs


def _pooled_channels(model: nn.Module) -> int:
    shapes = model.fpn.output_shape()
    return shapes[model.roi_heads.box_in_features[0]].channels


def _dynamic_shapes(spec: GraphSpec) -> Tuple[Dict[int, Any], ...]:
    """Per positional input: its dynamic dims (empty: static)."""
    return tuple(spec.dynamic.get(name, {}) for name in spec.input_names)


def _export_torch_export(spec: GraphSpec, path: str, metadata: Dict[str, str]) -> None:
    program = torch.export.export(spec.module, spec.example_inputs, dynamic_shapes=_dynamic_shapes(spec))
    torch.export.save(program, path, extra_files={MANIFEST: json.dumps(metadata)})


def _export_torchscript(spec: GraphSpec, path: str, metadata: Dict[str, str]) -> None:
    warnings.warn(
        "TorchScript is deprecated by PyTorch: prefer --format torch.export or onnx. The graph is traced "
        "(torch.jit.trace), not scripted.",
        FutureWarning,
        stacklevel=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and torch.jit deprecation warnings, said once above
        traced = torch.jit.trace(spec.module, spec.example_inputs, check_trace=False)
    torch.jit.save(traced, path, _extra_files={MANIFEST: json.dumps(metadata)})


_EXPORTERS = {"torch.export": _export_torch_export, "torchscript": _export_torchscript}


def export_model(model: nn.Module, cfg: CfgNode, output_dir: str, fmt: str = "onnx") -> Dict[str, Any]:
    """Export ``model`` (built from ``cfg``, weights loaded) to ``output_dir`` in format ``fmt``.

    Writes ``model.onnx`` (onnx: pixels to outputs) or one file per part (``model``, and for R-CNN
    ``box_head`` and ``mask_head``), the config (``config.yaml``, as given: the vocabulary is the
    manifest's) and the manifest (``denseclip_export.json``). The class names are recorded
    in the manifest and in each graph file (ONNX ``metadata_props``, torch.export / TorchScript
    extra files). Returns the manifest.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {FORMATS}, got '{fmt}'")
    check_exportable(cfg)
    text_tower_in_graph = model.text_side.prompting == "pre"
    if text_tower_in_graph and fmt != "onnx":
        raise ValueError(
            f"MODEL.DENSECLIP.PROMPTING 'pre' exports with --format onnx only, got '{fmt}': its text embeddings "
            "depend on the image, so the graph holds CLIP's text tower, which the split graphs of "
            "torch.export / TorchScript take as a constant"
        )
    if fmt == "onnx":
        _require_onnx_exporter()
    model.eval()
    os.makedirs(output_dir, exist_ok=True)
    class_names = list(model.class_names)
    graphs: Dict[str, Any] = {}
    manifest: Dict[str, Any] = {
        "format": fmt,
        "layout": "end_to_end" if fmt == "onnx" else "parts",
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "class_names": class_names,
        "language_guided": bool(model.language_guided),
        # Pre-model prompting: the frozen CLIP text tower runs in the graph, per image.
        "text_tower_in_graph": text_tower_in_graph,
        "config": CONFIG,
        "size_divisibility": model.backbone.size_divisibility,
        "min_image_side": MIN_SIDE_UNITS * model.backbone.size_divisibility,
        "max_image_side": max_image_side(cfg, model.backbone.size_divisibility),
        **runner_settings(cfg),
        "graphs": graphs,
        "torch": torch.__version__,
    }
    metadata = {"denseclip.class_names": json.dumps(class_names), "denseclip.meta_architecture": cfg.MODEL.META_ARCHITECTURE}
    if fmt == "onnx":
        graph = build_end_to_end_graph(model, cfg.MODEL.META_ARCHITECTURE, cfg.INPUT.FORMAT)
        path = os.path.join(output_dir, "model.onnx")
        logger.info("Exporting the model, pixels to outputs, to %s", path)
        with torch.no_grad():
            export_end_to_end(graph, path, {**metadata, "denseclip.graph": "model"}, floating_input=manifest["input"]["dtype"] == "float32")
        graphs["model"] = {"file": "model.onnx", "inputs": graph.input_names, "outputs": graph.output_names}
    for spec in build_graph_specs(model, cfg) if fmt != "onnx" else []:
        file_name = spec.name + EXTENSIONS[fmt]
        logger.info("Exporting graph '%s' (%s) to %s", spec.name, fmt, os.path.join(output_dir, file_name))
        with torch.no_grad():
            _EXPORTERS[fmt](spec, os.path.join(output_dir, file_name), {**metadata, "denseclip.graph": spec.name})
        graphs[spec.name] = {"file": file_name, "inputs": spec.input_names, "outputs": spec.output_names}
    with open(os.path.join(output_dir, CONFIG), "w") as f:
        f.write(cfg.dump())
    with open(os.path.join(output_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def runner_settings(cfg: CfgNode) -> Dict[str, Any]:
    """What a runner needs besides the graphs, readable without Detectron2 (tools/deploy/onnx_infer.py):
    the test-time resize and the input's pixel format; the detectors' score threshold (baked into
    an end-to-end graph) and mask threshold; the segmentation test-time views."""
    arch = cfg.MODEL.META_ARCHITECTURE
    settings: Dict[str, Any] = {
        "preprocess": {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                       "model_format": cfg.INPUT.FORMAT},
        # The end-to-end graph's input: RGB pixels, height x width x 3; float for segmentation views.
        "input": {"layout": "HWC", "channels": "RGB",
                  "dtype": "float32" if arch == "DenseCLIPSemanticSegmentor" else "uint8"},
    }
    if arch == "DenseCLIPSemanticSegmentor":
        t = cfg.TEST.SEM_SEG
        settings["sem_seg"] = {"mode": t.MODE, "crop_size": list(t.CROP_SIZE), "stride": list(t.STRIDE),
                               "scales": list(t.SCALES), "flip": bool(t.FLIP)}
    else:
        settings["score_threshold"] = score_threshold(cfg)
        settings["mask_threshold"] = 0.5  # Detectron2's detector_postprocess
    return settings


def score_threshold(cfg: CfgNode) -> float:
    """The detector's test score threshold."""
    if cfg.MODEL.META_ARCHITECTURE == "DenseCLIPRetinaNet":
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def _require_onnx_exporter() -> None:
    if not _importable("onnx"):
        raise ImportError("--format onnx needs onnx (the graph is checked and fixed with it): pip install -e '.[deploy]' "
                          "(pinned versions in setup.py)")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
