"""timm image encoders (Swin-T/S and others with ``forward_intermediates``) as Detectron2 backbones.

Detectron2 v0.6 has no Swin Transformer. timm's model is kept whole (its parameter names are those
of timm's ImageNet checkpoints, so they load as they are), its classifier and final norm pruned,
and its stages are read with ``forward_intermediates`` as NCHW maps named res2..res5 by stride.
"""
from __future__ import annotations

import importlib
import math
from typing import Dict, List

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

_STAGE_NAMES = ("res2", "res3", "res4", "res5")


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a B x C x H x W map (Swin's per-output norms in detection)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class TimmBackbone(Backbone):
    """A timm model's stages as res2..res5 (name = res{log2(stride)}), strides 4..32.

    Args:
        model_name: timm architecture, e.g. "swin_tiny_patch4_window7_224".
        out_features: the stages to emit (a subset of res2..res5).
        drop_path_rate: stochastic depth of the timm model (Swin-T detection: 0.2, Swin-S: 0.3).
        dynamic_img_size: let the model take any input size (Swin: window masks built per input).
        out_norm: a LayerNorm on each emitted stage, as the Swin detection backbones add.
    """

    def __init__(self, model_name: str, out_features: List[str], drop_path_rate: float = 0.2,
                 dynamic_img_size: bool = True, out_norm: bool = True):
        super().__init__()
        kwargs = {"dynamic_img_size": True} if dynamic_img_size else {}
        try:
            model = timm.create_model(model_name, pretrained=False, drop_path_rate=drop_path_rate, **kwargs)
        except RuntimeError as e:  # timm's "Unknown model" error
            raise ValueError(f"MODEL.TIMM.MODEL_NAME '{model_name}': {e}") from e
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"MODEL.TIMM.MODEL_NAME '{model_name}': the timm model has no forward_intermediates")
        infos = model.feature_info
        names = [f"res{int(math.log2(info['reduction']))}" for info in infos]
        unknown = [n for n in out_features if n not in names]
        if unknown:
            raise ValueError(f"MODEL.TIMM.OUT_FEATURES {unknown} are not stages of {model_name} (its stages: {names})")
        self._indices = [names.index(n) for n in out_features]
        # Stages after the last one used, the final norm and the classifier would get no gradient.
        model.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)
        self.model = model
        self.model_name = model_name
        self._out_features = list(out_features)
        self._out_feature_channels = {n: infos[names.index(n)]["num_chs"] for n in out_features}
        self._out_feature_strides = {n: infos[names.index(n)]["reduction"] for n in out_features}
        self.out_norms = nn.ModuleDict(
            {n: ChannelsFirstLayerNorm(self._out_feature_channels[n]) for n in out_features} if out_norm else {}
        )

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        divisor = self.size_divisibility
        if x.dim() != 4 or x.shape[-2] % divisor or x.shape[-1] % divisor:
            raise ValueError(f"{self.model_name} expects B x 3 x H x W with H, W divisible by {divisor}, got {tuple(x.shape)}")
        maps = self.model.forward_intermediates(x, indices=self._indices, intermediates_only=True)
        outputs = dict(zip(self._out_features, maps))
        for name, norm in self.out_norms.items():
            outputs[name] = norm(outputs[name])
        return outputs

    def convert_checkpoint(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A timm checkpoint of this architecture in this module's names: timm's own conversion of the
        architecture (``checkpoint_filter_fn`` of its module: old layouts, window or patch resizing),
        then the pruned classifier and final norm dropped."""
        module = importlib.import_module(type(self.model).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, self.model)
        own = self.model.state_dict()
        return {f"model.{k}": v for k, v in state_dict.items() if k in own or not k.startswith(("head.", "norm.", "fc."))}


def _check_input(input_shape: ShapeSpec) -> None:
    if input_shape.channels not in (None, 3):
        raise ValueError(f"timm backbones take 3-channel input, got {input_shape.channels} channels")


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """A timm model (MODEL.TIMM) emitting res2..res5."""
    _check_input(input_shape)
    t = cfg.MODEL.TIMM
    for name in t.OUT_FEATURES:
        if name not in _STAGE_NAMES:
            raise ValueError(f"MODEL.TIMM.OUT_FEATURES: unknown feature '{name}', expected a subset of {_STAGE_NAMES}")
    return TimmBackbone(t.MODEL_NAME, list(t.OUT_FEATURES), drop_path_rate=t.DROP_PATH_RATE,
                        dynamic_img_size=t.DYNAMIC_IMG_SIZE, out_norm=t.OUT_NORM)
