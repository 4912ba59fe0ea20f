"""Run an export (``tools/deploy/export_model.py``) like the PyTorch model.

``ExportedModel`` is a drop-in for the built model in inference: ``model(batched_inputs)`` returns
``[{"instances": Instances}]`` (detectors) or ``[{"sem_seg": K x H x W}]`` (segmentation) in original
image coordinates, so Detectron2's
``inference_on_dataset`` and ``train_net.py --eval-only --onnx PATH`` evaluate it.
``ExportedPredictor`` is the project's predictor on an export (``demo.py --onnx PATH``).

Per image the runner does what the model does around the graphs. An ONNX export is one graph
from pixels to detections (layout "end_to_end", :mod:`denseclip.deploy.end_to_end`): the runner
gives it the (test-resized) image as RGB pixels and applies Detectron2's ``detector_postprocess``
(rescaling to the original size, mask paste); segmentation runs the graph once per view (whole
image, windows, scales, flips). For the "parts" exports (torch.export, TorchScript) it normalises
with the exported config's pixel mean and std, pads to the size divisibility (Detectron2's
``ImageList``), runs the ``model`` graph, then the post-processing of
:mod:`denseclip.deploy.postprocess` and ``detector_postprocess``. Only an end-to-end graph needs no
PyTorch: tools/deploy/onnx_infer.py runs it with ONNX Runtime, NumPy and Pillow.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import ImageList
from torch import nn

from ..config import add_denseclip_config
from ..modeling.pixel_text import score_map_probabilities
from ..predictor import DenseCLIPPredictor, parse_vocabulary
from .exporter import MANIFEST, score_threshold
from .postprocess import Decoder, EndToEndDetections, RCNNDecoding, RetinaNetDecoding, SemanticSegmentationDecoding
from .runtime import load_graph


def read_manifest(path: str) -> Tuple[str, Dict[str, Any]]:
    """The export folder and its manifest, for the folder, its manifest or one of its graph files;
    a missing path, or a graph file the manifest names that is not there, is a FileNotFoundError
    naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"'{path}': no such export folder (export with tools/deploy/export_model.py --output {path})")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"'{path}' is not a DenseCLIP export: {manifest_path} is missing (export with tools/deploy/export_model.py)"
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    missing = [g["file"] for g in manifest.get("graphs", {}).values() if not os.path.isfile(os.path.join(folder, g["file"]))]
    if missing:
        raise FileNotFoundError(
            f"the export '{folder}' is incomplete: {', '.join(missing)} missing (its {MANIFEST} names them); "
            "export again with tools/deploy/export_model.py"
        )
    return folder, manifest


def exported_config(folder: str, manifest: Dict[str, Any], opts: Sequence[str] = ()) -> CfgNode:
    """The config the model was exported with, plus ``opts`` (e.g. score thresholds)."""
    cfg = get_cfg()
    add_denseclip_config(cfg)
    cfg.merge_from_file(os.path.join(folder, manifest["config"]))
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


class ExportedModel(nn.Module):
    """An export run with Detectron2's model interface (eval mode only).

    Args:
        path: the export folder (or its manifest, or one of its graph files).
        opts: config overrides as KEY VALUE pairs (post-processing keys such as score thresholds;
            the graphs are fixed).
        providers: ONNX Runtime execution providers (default CPU).
        num_threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, path: str, opts: Sequence[str] = (), providers: Optional[Sequence[str]] = None,
                 num_threads: Optional[int] = None):
        super().__init__()
        self.folder, self.manifest = read_manifest(path)
        self.cfg = exported_config(self.folder, self.manifest, opts)
        self.format = self.manifest["format"]
        graphs = {
            name: load_graph(os.path.join(self.folder, g["file"]), self.format, g["inputs"], g["outputs"],
                             providers=providers, num_threads=num_threads)
            for name, g in self.manifest["graphs"].items()
        }
        self.graph = graphs["model"]
        arch = self.manifest["meta_architecture"]
        num_classes = len(self.class_names)
        self.size_divisibility = int(self.manifest["size_divisibility"])
        self.return_score_maps = False  # as the DenseCLIP meta-architectures: "score_maps" in each output
        self.segmentation: Optional[SemanticSegmentationDecoding] = None
        self.end_to_end: Optional[EndToEndDetections] = None
        end_to_end = self.manifest.get("layout") == "end_to_end"
        if end_to_end and arch != "DenseCLIPSemanticSegmentor":
            self.decoder: Optional[Decoder] = None
            self.end_to_end = EndToEndDetections(self.cfg, self.graph, self.manifest["score_threshold"], score_threshold(self.cfg))
        elif arch == "DenseCLIPRetinaNet":
            self.decoder = RetinaNetDecoding(self.cfg, num_classes)
        elif arch == "DenseCLIPRCNN":
            self.decoder = RCNNDecoding(self.cfg, num_classes, graphs["box_head"], graphs.get("mask_head"))
        else:
            self.decoder = None
            self.segmentation = SemanticSegmentationDecoding(self.cfg, self.graph, num_classes, self.size_divisibility,
                                                             self.check_size, pixels=end_to_end)
        self.register_buffer("pixel_mean", torch.tensor(self.cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(self.cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.eval()

    @property
    def class_names(self) -> List[str]:
        return list(self.manifest["class_names"])

    @property
    def language_guided(self) -> bool:
        return bool(self.manifest["language_guided"])

    def check_size(self, padded: torch.Tensor) -> None:
        lo, hi = self.manifest["min_image_side"], self.manifest["max_image_side"]
        h, w = padded.shape[-2:]
        if not (lo <= h <= hi and lo <= w <= hi):
            raise ValueError(
                f"the padded input is {h}x{w}; the exported graph takes sides from {lo} to {hi} px "
                "(resize the image, INPUT.MIN/MAX_SIZE_TEST)"
            )

    def normalize(self, batched_input: Dict[str, Any]) -> torch.Tensor:
        return (batched_input["image"].to(self.pixel_mean.device).float() - self.pixel_mean) / self.pixel_std

    def preprocess_image(self, batched_input: Dict[str, Any]) -> ImageList:
        """The model's ``preprocess_image`` for one input: normalise, pad (with zeros, after
        normalisation) to the size divisibility, check the graph's size bounds."""
        images = ImageList.from_tensors([self.normalize(batched_input)], self.size_divisibility)
        self.check_size(images.tensor)
        return images

    def run(self, batched_input: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Optional[ImageList]]:
        """Predictions for one input dict, the graph's named outputs, and the padded input (for
        segmentation, which may run the graph on several views: the prediction only; an end-to-end
        graph pads inside: None)."""
        if self.segmentation is not None:
            if self.return_score_maps:
                raise ValueError("score maps of an exported segmentation model are not returned (several views per image)")
            image = batched_input["image"].float() if self.segmentation.pixels else self.normalize(batched_input)
            return {"sem_seg": self.segmentation(image, batched_input)}, {}, None
        if self.end_to_end is not None:
            results, outputs = self.end_to_end(batched_input["image"].to(self.pixel_mean.device).float())
            image_size = results.image_size
            padded_size = tuple(-(-side // self.size_divisibility) * self.size_divisibility for side in image_size)
            images = None
        else:
            images = self.preprocess_image(batched_input)
            outputs = self.graph(images.tensor)
            (results,) = self.decoder(images, outputs)
            image_size, padded_size = tuple(images.image_sizes[0]), tuple(images.tensor.shape[-2:])
        prediction = GeneralizedRCNN._postprocess([results], [batched_input], [image_size])[0]
        if self.return_score_maps:  # DenseCLIPMetaArchMixin.add_score_maps, from the graph's output
            output_size = (batched_input.get("height", image_size[0]), batched_input.get("width", image_size[1]))
            prediction["score_maps"] = score_map_probabilities(outputs["score_map"][0], padded_size, image_size, output_size)
        return prediction, outputs, images

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.training:
            raise RuntimeError("an exported model runs inference only: call .eval()")
        with torch.no_grad():
            return [self.run(x)[0] for x in batched_inputs]


class ExportedPredictor(DenseCLIPPredictor):
    """``DenseCLIPPredictor`` on an export: same preprocessing (resize per INPUT.MIN/MAX_SIZE_TEST,
    BGR input converted per INPUT.FORMAT), ``__call__``, ``predict`` (with score maps, which the
    graph outputs), ``score_maps`` and ``metadata``. The vocabulary is the exported one."""

    def __init__(self, path: str, opts: Sequence[str] = (), vocabulary: Optional[Sequence[str]] = None, **runner_kwargs):
        # DenseCLIPPredictor.__init__ is not called: it builds and loads the PyTorch model.
        self.model = ExportedModel(path, opts, **runner_kwargs)
        self.cfg = self.model.cfg
        names = parse_vocabulary(vocabulary)
        if names and names != self.class_names:
            raise ValueError(
                f"the export at '{self.model.folder}' detects its exported vocabulary ({len(self.class_names)} classes: "
                f"{', '.join(self.class_names[:5])}{', ...' if len(self.class_names) > 5 else ''}); another vocabulary "
                "needs another export (tools/deploy/export_model.py --vocabulary)"
            )
        self._setup_inputs_and_metadata()

    def set_vocabulary(self, names) -> None:
        if parse_vocabulary(names) != self.class_names:
            raise ValueError("an export's vocabulary is a constant of its graphs: export again with --vocabulary")
