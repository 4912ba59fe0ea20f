"""Run one exported graph, whatever its format: tensors in (positional, in the manifest's input
order), named tensors out. ONNX graphs run in ONNX Runtime (an optional dependency: the ``deploy``
extra), torch.export and TorchScript graphs in PyTorch."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


class GraphRunner:
    """Base: ``runner(*tensors) -> {output name: tensor}``."""

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str]):
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, *inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"graph inputs {self.input_names}: expected {len(self.input_names)} tensors, got {len(inputs)}")
        return dict(zip(self.output_names, self._run(inputs)))

    def _run(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        raise NotImplementedError


def import_onnxruntime():
    """``onnxruntime``, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "Running an ONNX export needs ONNX Runtime: pip install -e '.[deploy]' (pinned onnxruntime, onnx, "
            "onnxscript; see setup.py), or export with --format torch.export and run it in PyTorch"
        ) from e
    return onnxruntime


class OnnxRuntimeGraph(GraphRunner):
    """An ONNX file in an ``onnxruntime.InferenceSession`` (CPU unless ``providers`` say otherwise),
    with ``num_threads`` intra-op threads (default: PyTorch's, so that both compare on the same
    threads)."""

    def __init__(self, path: str, input_names: Sequence[str], output_names: Sequence[str],
                 providers: Optional[Sequence[str]] = None, num_threads: Optional[int] = None):
        super().__init__(input_names, output_names)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: not the constants its graph optimizer drops
        self.session = ort.InferenceSession(path, options, providers=list(providers or ["CPUExecutionProvider"]))
        names = [o.name for o in self.session.get_outputs()]
        if names != self.output_names:
            raise ValueError(f"{path}: the graph's outputs {names} differ from the manifest's {self.output_names}")

    def _run(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, inputs)}
        return [torch.from_numpy(o) for o in self.session.run(self.output_names, feed)]


class TorchGraph(GraphRunner):
    """A torch.export program (``.pt2``) or a traced TorchScript module (``.ts``), run in PyTorch."""

    def __init__(self, path: str, fmt: str, input_names: Sequence[str], output_names: Sequence[str], device: str = "cpu"):
        super().__init__(input_names, output_names)
        self.device = torch.device(device)
        if fmt == "torch.export":
            self.module = torch.export.load(path).module()
        else:
            self.module = torch.jit.load(path, map_location=self.device)

    def _run(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        with torch.no_grad():
            out = self.module(*[t.to(self.device) for t in inputs])
        return list(out) if isinstance(out, (tuple, list)) else [out]


def load_graph(path: str, fmt: str, input_names: Sequence[str], output_names: Sequence[str], *,
               providers: Optional[Sequence[str]] = None, num_threads: Optional[int] = None, device: str = "cpu") -> GraphRunner:
    if fmt == "onnx":
        return OnnxRuntimeGraph(path, input_names, output_names, providers=providers, num_threads=num_threads)
    return TorchGraph(path, fmt, input_names, output_names, device=device)
