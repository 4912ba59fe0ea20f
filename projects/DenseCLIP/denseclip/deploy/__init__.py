"""Deployment: export DenseCLIP models to ONNX / torch.export / (traced) TorchScript with the
vocabulary baked in (:mod:`.exporter`, :mod:`.graphs`) and run the exports like the PyTorch model
(:mod:`.runner`, :mod:`.postprocess`, :mod:`.runtime`). ONNX Runtime is optional (the ``deploy`` extra)."""
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
