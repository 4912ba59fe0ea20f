"""CLIP's VisionTransformer (from open_clip) as a Detectron2 backbone, ViTDet style.

The plain ViT yields one stride-16 map; a simple feature pyramid (deconvolutions / pooling of the
last block's tokens, as in ViTDet) turns it into res2..res5 at strides 4..32, which Detectron2's
FPN then consumes like a ResNet's stages. CLIP's dense embeddings are ln_post + proj of the tokens.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from open_clip.transformer import VisionTransformer

from .clip_resnet import CLIP_DENSE, CLIP_GLOBAL, clip_embedding_shapes, resize_spatial_pos_embed


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor (ViTDet's pyramid norm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _pyramid_stage(width: int, scale: float) -> Tuple[nn.Module, int]:
    """Module that resamples a stride-16 map by ``scale``, and its output channels."""
    if scale == 4.0:
        half, quarter = width // 2, width // 4
        return nn.Sequential(
            nn.ConvTranspose2d(width, half, kernel_size=2, stride=2),
            ChannelLayerNorm(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
        ), quarter
    if scale == 2.0:
        return nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2), width // 2
    if scale == 1.0:
        return nn.Identity(), width
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), width
    raise ValueError(f"MODEL.CLIP.VIT_PYRAMID_SCALES: unsupported scale {scale}, expected 4, 2, 1 or 0.5")


class CLIPViT(Backbone):
    """open_clip ViT with a simple feature pyramid; emits res2..res5 plus CLIP global/dense embeddings."""

    def __init__(
        self,
        visual: VisionTransformer,
        out_features: List[str] = ("res2", "res3", "res4", "res5"),
        scales: List[float] = (4.0, 2.0, 1.0, 0.5),
        with_attention_pool: bool = True,
    ):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
            raise ValueError("CLIPViT supports CLIP ViTs with class-token pooling (e.g. ViT-B-16)")
        self.visual = visual
        patch = visual.conv1.stride[0]
        width = visual.conv1.out_channels
        self.patch_size = patch
        self.embed_dim = visual.output_dim if with_attention_pool else 0
        self.with_dense = with_attention_pool
        self.pyramid = nn.ModuleDict()
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for scale in scales:
            stride = int(patch / scale)
            name = f"res{int(math.log2(stride))}"
            stage, channels = _pyramid_stage(width, float(scale))
            self.pyramid[name] = stage
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride
        for name in out_features:
            if name not in self.pyramid:
                raise ValueError(f"MODEL.CLIP.OUT_FEATURES: '{name}' is not produced by scales {list(scales)}")
        self._out_features = list(out_features)

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    def output_shape(self) -> Dict[str, ShapeSpec]:
        shapes = {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
        if self.with_dense:
            shapes.update(clip_embedding_shapes(self.embed_dim, dense_stride=self.patch_size))
        return shapes

    def encode_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Run the ViT on an image of any size (positional embedding interpolated); B x (1+hw) x C."""
        v = self.visual
        x = v.conv1(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_spatial_pos_embed(v.positional_embedding, grid).to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        if not getattr(v.transformer, "batch_first", True):
            x = v.transformer(x.transpose(0, 1)).transpose(0, 1)
        else:
            x = v.transformer(x)
        return x, grid

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[-2] % self.size_divisibility or x.shape[-1] % self.size_divisibility:
            raise ValueError(
                f"CLIPViT expects B x 3 x H x W with H, W divisible by {self.size_divisibility}, got {tuple(x.shape)}"
            )
        tokens, (h, w) = self.encode_tokens(x)
        spatial = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        outputs = {name: self.pyramid[name](spatial) for name in self._out_features}
        if self.with_dense:
            v = self.visual
            embedded = v.ln_post(tokens) @ v.proj
            outputs[CLIP_GLOBAL] = embedded[:, 0]
            outputs[CLIP_DENSE] = embedded[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return outputs
