"""CLIP's VisionTransformer (from open_clip) as a Detectron2 backbone.

The plain ViT yields stride-16 maps; a feature pyramid turns them into res2..res5 at strides 4..32,
which Detectron2's FPN then consumes like a ResNet's stages. Two pyramids: "simple" (ViTDet:
deconvolutions / pooling of the last block's tokens) and "denseclip" (the reference's segmentation
backbone: level i from block ``out_indices[i]``, GroupNorm(1) + full-width deconvolutions).
CLIP's dense embeddings are ln_post + proj of the last block's tokens.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from open_clip.transformer import VisionTransformer
from timm.layers import DropPath

from .clip_resnet import CLIP_DENSE, CLIP_GLOBAL, clip_embedding_shapes, resize_spatial_pos_embed

PYRAMIDS = ("simple", "denseclip")
VIT_POS_EMBED_MODES = ("interpolate", "grid_interpolate")


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


def _denseclip_pyramid_stage(width: int, scale: float) -> Tuple[nn.Module, int]:
    """The reference's fpn1..fpn4 (segmentation/denseclip/models.py, patch 16): GroupNorm(1) first,
    deconvolutions keeping the width; module indices as there, so checkpoints map one to one."""
    if scale == 4.0:
        return nn.Sequential(
            nn.GroupNorm(1, width),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.ConvTranspose2d(width, width, kernel_size=2, stride=2),
        ), width
    if scale == 2.0:
        return nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, kernel_size=2, stride=2)), width
    if scale == 1.0:
        return nn.GroupNorm(1, width), width
    if scale == 0.5:
        return nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(kernel_size=2, stride=2)), width
    raise ValueError(f"MODEL.CLIP.VIT_PYRAMID_SCALES: unsupported scale {scale}, expected 4, 2, 1 or 0.5")


def add_drop_path(visual: VisionTransformer, rate: float) -> None:
    """Stochastic depth on both residual branches of every block, rate increasing linearly from 0
    (first block) to ``rate`` (last), as the reference's CLIPVisionTransformer (timm's drop_path).
    open_clip's blocks scale each branch with ``ls_1`` / ``ls_2`` before the residual sum, so the
    drop follows them there."""
    blocks = visual.transformer.resblocks
    for block, p in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist()):
        if p > 0:
            block.ls_1 = nn.Sequential(block.ls_1, DropPath(p))
            block.ls_2 = nn.Sequential(block.ls_2, DropPath(p))


class CLIPViT(Backbone):
    """open_clip ViT with a feature pyramid; emits res2..res5 plus CLIP global/dense embeddings.

    Args:
        pyramid: "simple" (ViTDet, every level from the last block) or "denseclip" (the reference's
            segmentation backbone, level i from block ``out_indices[i]``).
        pos_embed_mode: "interpolate" (CLIP's grid, bicubic, to every input) or "grid_interpolate"
            (the reference: resized once, bilinearly, to a trainable ``pos_embed_grid`` grid, then
            bilinearly to every input).
        class_embed_twice: the reference adds the class embedding to the class position too (bug
            #20 of raoyongming/DenseCLIP, which its released checkpoints were trained with).
    """

    def __init__(
        self,
        visual: VisionTransformer,
        out_features: List[str] = ("res2", "res3", "res4", "res5"),
        scales: List[float] = (4.0, 2.0, 1.0, 0.5),
        with_attention_pool: bool = True,
        *,
        pyramid: str = "simple",
        out_indices: Sequence[int] = (),
        pos_embed_mode: str = "interpolate",
        pos_embed_grid: int = 14,
        drop_path_rate: float = 0.0,
        class_embed_twice: bool = False,
        strict_input_size: bool = True,
    ):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
            raise ValueError("CLIPViT supports CLIP ViTs with class-token pooling (e.g. ViT-B-16)")
        if pyramid not in PYRAMIDS:
            raise ValueError(f"MODEL.CLIP.VIT_PYRAMID: expected one of {PYRAMIDS}, got '{pyramid}'")
        if pos_embed_mode not in VIT_POS_EMBED_MODES:
            raise ValueError(
                f"MODEL.CLIP.POS_EMBED_MODE: CLIP ViTs support {VIT_POS_EMBED_MODES}, got '{pos_embed_mode}'"
            )
        self.visual = visual
        patch = visual.conv1.stride[0]
        width = visual.conv1.out_channels
        self.patch_size = patch
        self.embed_dim = visual.output_dim if with_attention_pool else 0
        self.with_dense = with_attention_pool
        self.pos_embed_mode = pos_embed_mode
        self.class_embed_twice = class_embed_twice
        if not with_attention_pool:
            # Without dense embeddings ln_post / proj are unused (the reference's baseline has none).
            visual.ln_post, visual.proj = nn.Identity(), None
        if pos_embed_mode == "grid_interpolate":
            pos = resize_spatial_pos_embed(visual.positional_embedding.detach(), (pos_embed_grid, pos_embed_grid), mode="bilinear")
            visual.positional_embedding = nn.Parameter(pos.clone())
        if drop_path_rate > 0:
            add_drop_path(visual, drop_path_rate)
        num_blocks = len(visual.transformer.resblocks)
        if pyramid == "denseclip":
            if len(out_indices) != len(scales) or not all(0 <= i < num_blocks for i in out_indices):
                raise ValueError(
                    f"MODEL.CLIP.VIT_OUT_INDICES {list(out_indices)}: one block index (0..{num_blocks - 1}) per "
                    f"pyramid level of MODEL.CLIP.VIT_PYRAMID_SCALES {list(scales)}"
                )
            build_stage = _denseclip_pyramid_stage
        else:
            out_indices, build_stage = [num_blocks - 1] * len(scales), _pyramid_stage
        self.pyramid = nn.ModuleDict()
        self._block_of: Dict[str, int] = {}
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for scale, block in zip(scales, out_indices):
            stride = int(patch / scale)
            name = f"res{int(math.log2(stride))}"
            stage, channels = build_stage(width, float(scale))
            self._block_of[name] = int(block)
            self.pyramid[name] = stage
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride
        for name in out_features:
            if name not in self.pyramid:
                raise ValueError(f"MODEL.CLIP.OUT_FEATURES: '{name}' is not produced by scales {list(scales)}")
        self._out_features = list(out_features)
        # Inputs must be multiples of 32 (Detectron2 pads them), unless the builder says otherwise:
        # the segmentors' unpadded test windows need not be.
        self.strict_input_size = strict_input_size

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

    def encode_tokens(self, x: torch.Tensor) -> Tuple[Dict[int, torch.Tensor], Tuple[int, int]]:
        """Run the ViT on an image of any size (positional embedding resized to its grid); the
        B x (1+hw) x C tokens after each block the pyramid reads and after the last, by block index."""
        v = self.visual
        x = v.conv1(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        mode = "bilinear" if self.pos_embed_mode == "grid_interpolate" else "bicubic"
        pos = resize_spatial_pos_embed(v.positional_embedding, grid, mode=mode).to(x.dtype)
        if self.class_embed_twice:
            pos = torch.cat([pos[:1] + v.class_embedding.to(x.dtype), pos[1:]])
        x = x + pos
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        if not getattr(v.transformer, "batch_first", True):
            x = x.transpose(0, 1)
        wanted = set(self._block_of.values()) | {len(v.transformer.resblocks) - 1}
        tokens: Dict[int, torch.Tensor] = {}
        for index, block in enumerate(v.transformer.resblocks):
            x = block(x)
            if index in wanted:
                tokens[index] = x if getattr(v.transformer, "batch_first", True) else x.transpose(0, 1)
        return tokens, grid

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        divisible = not (x.shape[-2] % self.size_divisibility or x.shape[-1] % self.size_divisibility)
        if x.dim() != 4 or (self.strict_input_size and not divisible):
            raise ValueError(
                f"CLIPViT expects B x 3 x H x W with H, W divisible by {self.size_divisibility}, got {tuple(x.shape)}"
            )
        block_tokens, (h, w) = self.encode_tokens(x)
        outputs = {}
        for name in self._out_features:
            spatial = block_tokens[self._block_of[name]][:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
            outputs[name] = self.pyramid[name](spatial)
        tokens = block_tokens[len(self.visual.transformer.resblocks) - 1]
        if self.with_dense:
            v = self.visual
            embedded = v.ln_post(tokens) @ v.proj
            outputs[CLIP_GLOBAL] = embedded[:, 0]
            outputs[CLIP_DENSE] = embedded[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return outputs
