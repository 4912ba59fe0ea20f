"""``--format onnx``: one ONNX graph per model, pixels to final outputs (:mod:`.end_to_end`).

Exporter: torch.onnx's TorchScript-based exporter (``dynamo=False``), which traces the model's own
inference code. Why not the dynamo exporter (torch.export, which ``--format torch.export`` uses): the
post-processing has data-dependent sizes (score thresholds, NMS, ROI level assignment), which
torch.export must prove things about (unbacked sizes) and which Detectron2's code, written for
tracing, does not provide; tracing records them as ONNX ``NonZero`` / ``TopK`` /
``NonMaxSuppression`` / ``RoiAlign`` nodes with dynamic shapes, and takes seconds rather than
minutes. While tracing, Detectron2 keeps shapes as tensors, so the graph takes any image size.

One fix after tracing: Detectron2 splits a batch's regions per image (``Tensor.split`` by
``len(instances)``), which tracing records with the trace's region count. The export is for one
image, so each such ``Split`` has one output, the whole input: it becomes an ``Identity``.
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterable, List

import torch

from .end_to_end import PixelsGraph

# ONNX Runtime 1.2x runs it; RoiAlign's half-pixel mode (Detectron2's aligned ROIAlign) needs >= 16.
END_TO_END_OPSET = 18
# Example input: sides that are not multiples of 32 (padding in the graph) and unequal.
EXAMPLE_SIZE = (171, 229)


def example_image(floating: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (*EXAMPLE_SIZE, 3), generator=generator, dtype=torch.uint8)
    return image.float() if floating else image


def export_end_to_end(graph: PixelsGraph, path: str, metadata: Dict[str, str], floating_input: bool) -> None:
    """Trace ``graph`` to an ONNX file at ``path`` with dynamic image height and width (and number
    of detections), fix it (module docstring) and add ``metadata`` (``metadata_props``)."""
    import onnx

    image = example_image(floating_input)
    dynamic_axes = {graph.input_names[0]: {0: "height", 1: "width"}}
    for name in graph.output_names:
        dynamic_axes[name] = {0: "detections"} if name in ("boxes", "scores", "classes", "mask_probs") else {}
    with warnings.catch_warnings():
        # Detectron2's shape checks and asserts, recorded as constants: true for every input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph, (image,), path, dynamo=False, opset_version=END_TO_END_OPSET, input_names=graph.input_names,
                          output_names=graph.output_names, dynamic_axes=dynamic_axes)
    model = onnx.load(path)
    single_image_splits_to_identity(model.graph.node)
    drop_unused_initializers(model.graph)
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in metadata.items())
    size = sum(p.numel() * p.element_size() for p in graph.parameters())
    onnx.save(model, path, save_as_external_data=size > 1_800_000_000)  # protobuf's 2 GB limit


def single_image_splits_to_identity(nodes: Iterable) -> int:
    """``Split`` nodes with one output (one image's regions) become ``Identity``; returns how many."""
    count = 0
    for node in nodes:
        if node.op_type == "Split" and len(node.output) == 1:
            node.op_type = "Identity"
            del node.input[1:]
            del node.attribute[:]
            count += 1
    return count


def drop_unused_initializers(graph) -> None:
    """Initializers no node reads (the split sizes above), which ONNX Runtime warns about."""
    used = set(_node_inputs(graph.node)) | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _node_inputs(nodes: Iterable) -> List[str]:
    names: List[str] = []
    for node in nodes:
        names.extend(node.input)
        for attribute in node.attribute:  # subgraphs (If, Loop) may read outer initializers
            if attribute.g.node:
                names.extend(_node_inputs(attribute.g.node))
            for g in attribute.graphs:
                names.extend(_node_inputs(g.node))
    return names
