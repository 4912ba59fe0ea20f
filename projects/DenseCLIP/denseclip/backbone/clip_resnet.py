"""CLIP's ModifiedResNet (from open_clip) as a Detectron2 backbone with dense CLIP embeddings."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

from .norm import freeze_module

# Extra outputs of CLIP bottom-up backbones, next to the multi-scale features.
CLIP_GLOBAL = "clip_global"  # B x D: CLIP's image embedding
CLIP_DENSE = "clip_dense"  # B x D x H/s x W/s: per-location embeddings in the same space

_STAGES = ("res2", "res3", "res4", "res5")


def clip_embedding_shapes(embed_dim: int, dense_stride: int) -> Dict[str, ShapeSpec]:
    """Declared shapes of CLIP's embeddings among an image encoder's outputs."""
    return {CLIP_DENSE: ShapeSpec(channels=embed_dim, stride=dense_stride), CLIP_GLOBAL: ShapeSpec(channels=embed_dim)}


def resize_spatial_pos_embed(pos_embed: torch.Tensor, size: Tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a CLIP positional embedding [cls, grid*grid] to [cls, h*w] by interpolating the grid.

    CLIP learned its positional embedding on a square grid (7x7 for RN50 at 224px); detection
    inputs have arbitrary, non-square sizes, so the grid is interpolated at run time.
    """
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid = int(math.isqrt(grid_pos.shape[0]))
    if grid * grid != grid_pos.shape[0]:
        raise ValueError(f"positional embedding of {grid_pos.shape[0]} positions is not a square grid")
    # The shortcut is skipped under torch.export: a branch on the feature size would make the
    # exported graph guard on it, and interpolating to the same size is an exact copy anyway.
    if not torch.compiler.is_exporting() and (grid, grid) == tuple(size):
        return pos_embed
    dim = grid_pos.shape[1]
    grid_pos = grid_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=size, mode=mode, align_corners=False).to(pos_embed.dtype)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(size[0] * size[1], dim)
    return torch.cat([cls_pos, grid_pos], dim=0)


# How the attention pool's positional embedding meets a feature grid of any size.
POS_EMBED_MODES = ("interpolate", "grid_crop", "grid_interpolate")
# Modes whose positional grid is resized to POS_EMBED_GRID once, when the model is built.
BUILD_TIME_GRID_MODES = ("grid_crop", "grid_interpolate")


def resize_pos_embed_grid(pool: AttentionPool2d, grid: int) -> None:
    """The reference's build-time resize: the pool's positional embedding becomes a trainable
    ``grid`` x ``grid`` (+ class position) parameter, bilinearly resized from CLIP's grid once."""
    pos = pool.positional_embedding.detach()
    resized = resize_spatial_pos_embed(pos, (grid, grid), mode="bilinear")
    pool.positional_embedding = torch.nn.Parameter(resized.clone(), requires_grad=pool.positional_embedding.requires_grad)


def crop_spatial_pos_embed(pos_embed: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """[cls, top-left h x w block of the square grid]: the reference's run-time positions."""
    grid = int(math.isqrt(pos_embed.shape[0] - 1))
    h, w = size
    if h > grid or w > grid:
        raise ValueError(
            f"a {h}x{w} res5 grid does not fit the attention pool's {grid}x{grid} positional grid (inputs up to "
            f"{grid * 32} px per side; MODEL.CLIP.POS_EMBED_GRID, or MODEL.CLIP.POS_EMBED_MODE 'interpolate')"
        )
    spatial = pos_embed[1:].reshape(grid, grid, -1)[:h, :w].reshape(h * w, -1)
    return torch.cat([pos_embed[:1], spatial], dim=0)


def attention_pool_tokens(pool: AttentionPool2d, x: torch.Tensor, pos_embed_mode: str = "interpolate") -> Tuple[torch.Tensor, torch.Tensor]:
    """Run CLIP's attention pool on every location, not only on the pooled token.

    Same weights and computation as ``AttentionPool2d.forward``, which returns token 0 only;
    DenseCLIP also needs tokens 1: as dense embeddings. The positional embedding is resized to the
    feature grid ("interpolate", bicubic from CLIP's grid; "grid_interpolate", bilinear from the
    build-time grid: the reference's segmentation models) or its top-left block is taken
    ("grid_crop", the reference's detectors).

    Returns:
        global embedding (B x D) and dense embeddings (B x D x H x W).
    """
    b, c, h, w = x.shape
    tokens = x.flatten(2).permute(2, 0, 1)  # (HW) x B x C
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
    if pos_embed_mode == "grid_crop":
        pos = crop_spatial_pos_embed(pool.positional_embedding, (h, w))
    elif pos_embed_mode == "grid_interpolate":
        pos = resize_spatial_pos_embed(pool.positional_embedding, (h, w), mode="bilinear")
    else:
        pos = resize_spatial_pos_embed(pool.positional_embedding, (h, w))
    tokens = tokens + pos[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens, key=tokens, value=tokens,
        embed_dim_to_check=c,
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=pool.training,
        need_weights=False,
    )
    global_embed = out[0]
    dense = out[1:].permute(1, 2, 0).reshape(b, -1, h, w)
    return global_embed, dense


class CLIPResNet(Backbone):
    """open_clip's ModifiedResNet emitting res2..res5 (strides 4..32) and, with its attention pool,
    CLIP's global embedding and dense embeddings at stride 32.
    """

    def __init__(
        self,
        visual: ModifiedResNet,
        out_features: List[str] = list(_STAGES),
        with_attention_pool: bool = True,
        freeze_at: int = 0,
        pos_embed_mode: str = "interpolate",
        pos_embed_grid: int = 42,
        strict_input_size: bool = True,
    ):
        super().__init__()
        if pos_embed_mode not in POS_EMBED_MODES:
            raise ValueError(f"MODEL.CLIP.POS_EMBED_MODE: expected one of {POS_EMBED_MODES}, got '{pos_embed_mode}'")
        for name in out_features:
            if name not in _STAGES:
                raise ValueError(f"MODEL.CLIP.OUT_FEATURES: unknown feature '{name}', expected a subset of {_STAGES}")
        self.visual = visual
        if not with_attention_pool:
            # The CLIP-baseline detectors do not use it; dropping it keeps its ~18M parameters out.
            self.visual.attnpool = None
        self.embed_dim = visual.output_dim if with_attention_pool else 0
        self.pos_embed_mode = pos_embed_mode
        if with_attention_pool and pos_embed_mode in BUILD_TIME_GRID_MODES:
            resize_pos_embed_grid(visual.attnpool, pos_embed_grid)
        self._out_features = list(out_features)
        # Inputs must be multiples of 32 (Detectron2 pads them), unless the builder says otherwise:
        # the segmentors' unpadded test windows need not be.
        self.strict_input_size = strict_input_size
        width = visual.conv3.out_channels  # the stem's output width (64 for RN50/RN101)
        self._out_feature_channels = {f"res{i + 2}": width * 4 * 2 ** i for i in range(4)}
        self._out_feature_strides = {f"res{i + 2}": 4 * 2 ** i for i in range(4)}

        # Normalisation (MODEL.CLIP.NORM) is converted by the builder, which knows the device.
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 residual stages."""
        v = self.visual
        if freeze_at >= 1:
            for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
                setattr(v, name, freeze_module(getattr(v, name)))
        for index in range(1, min(freeze_at, 5)):
            setattr(v, f"layer{index}", freeze_module(getattr(v, f"layer{index}")))

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        shapes = {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
        if self.visual.attnpool is not None:
            shapes.update(clip_embedding_shapes(self.embed_dim, dense_stride=32))
        return shapes

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or (self.strict_input_size and (x.shape[-2] % 32 or x.shape[-1] % 32)):
            raise ValueError(f"CLIPResNet expects B x 3 x H x W with H, W divisible by 32, got {tuple(x.shape)}")
        v = self.visual
        outputs = {}
        x = v.stem(x)
        for index, stage in enumerate((v.layer1, v.layer2, v.layer3, v.layer4)):
            x = stage(x)
            name = f"res{index + 2}"
            if name in self._out_features:
                outputs[name] = x
        if v.attnpool is not None:
            outputs[CLIP_GLOBAL], outputs[CLIP_DENSE] = attention_pool_tokens(v.attnpool, x, self.pos_embed_mode)
        return outputs
