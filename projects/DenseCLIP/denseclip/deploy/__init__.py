"""Deployment: export DenseCLIP models with the vocabulary baked in (:mod:`.exporter`): to one ONNX
graph from pixels to outputs (:mod:`.end_to_end`, :mod:`.onnx_export`; tools/deploy/onnx_infer.py
runs it without PyTorch), or to torch.export / (traced) TorchScript graphs of the network parts
(:mod:`.graphs`); and run any export like the PyTorch model (:mod:`.runner`, :mod:`.postprocess`,
:mod:`.runtime`). ONNX Runtime is optional (the ``deploy`` extra)."""
from .exporter import FORMATS, MANIFEST, build_graph_specs, export_model
from .runner import ExportedModel, ExportedPredictor, exported_config, read_manifest
from .runtime import import_onnxruntime, load_graph

__all__ = [
    "FORMATS",
    "MANIFEST",
    "ExportedModel",
    "ExportedPredictor",
    "build_graph_specs",
    "export_model",
    "exported_config",
    "import_onnxruntime",
    "load_graph",
    "read_manifest",
]
