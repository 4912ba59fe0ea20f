"""State-dict layout of the DenseCLIP reference segmentation checkpoints (raoyongming/DenseCLIP,
segmentation/, mmseg 0.19), built from the reference's sources, not from this project's code.

``segmentation_spec(arch)`` lists (name, shape, dtype) as ``mmcv.runner.save_checkpoint`` writes them for

    segmentation/configs/denseclip_fpn_{res50,res101}_512x512_80k.py, denseclip_fpn_vit-b_640x640_80k.py
    segmentation/configs/fpn_clipres{50,101}_512x512_80k.py, fpn_clipvit-b_640x640_80k.py

Where each name comes from (reference = segmentation/denseclip/*.py at commit 5eda47f):

* DenseCLIP (denseclip.py:15-91): own parameters ``contexts`` (1, 13-5, 512) and ``gamma`` (text_dim,),
  then backbone, text_encoder, context_decoder, neck, decode_head; ``identity_head`` (heads.py:10-27) sets
  ``conv_seg = None`` and has no tensor. Baselines: mmseg EncoderDecoder (backbone, neck, decode_head).
* backbone: CLIPResNetWithAttention (models.py:186-256; attnpool grid input_resolution // 32 = 16 for
  512: 257 positions) / CLIPResNet (no attnpool); CLIPVisionTransformer (models.py:425-480): own
  class_embedding, positional_embedding ((640 // 16)^2 + 1 = 1601), proj (get_embeddings only), then
  conv1 (no bias), ln_pre, transformer.resblocks.i (nn.MultiheadAttention in_proj_* / out_proj, ln_1, mlp
  c_fc / c_proj, ln_2), ln_post (get_embeddings only), fpn1 = [GroupNorm, ConvT, SyncBN, GELU, ConvT],
  fpn2 = [GroupNorm, ConvT], fpn3 = GroupNorm, fpn4 = [GroupNorm, MaxPool].
* neck: mmseg FPN (mmseg/models/necks/fpn.py), 4 ConvModules without norm per list (conv weight + bias).
* decode_head: mmseg FPNHead (mmseg/models/decode_heads/fpn_head.py) with SyncBN ConvModules
  (``conv`` without bias + ``bn``; abbreviation "bn") and Upsample modules in between, conv_seg last
  registered before them (BaseDecodeHead.__init__).
"""
from typing import Dict

import torch
from reference_layout import EMBED_DIM, F32, Spec, attnpool, bn, clip_resnet_trunk, context_decoder, conv, fpn, ln, random_state_dict
from reference_layout import text_encoder as reference_text_encoder

SEG_ARCHS = ("denseclip_r50", "denseclip_r101", "denseclip_vit", "clip_r50", "clip_r101", "clip_vit")
VIT_WIDTH, VIT_LAYERS, VIT_RESOLUTION = 768, 12, 640


def vit_backbone(prefix: str, embeddings: bool, output_dim: int = 512) -> Spec:
    w = VIT_WIDTH
    grid = VIT_RESOLUTION // 16
    s: Spec = [(f"{prefix}.class_embedding", (w,), F32), (f"{prefix}.positional_embedding", (grid * grid + 1, w), F32)]
    if embeddings:
        s.append((f"{prefix}.proj", (w, output_dim), F32))
    s += conv(f"{prefix}.conv1", 3, w, 16, bias=False) + ln(f"{prefix}.ln_pre", w)
    for i in range(VIT_LAYERS):
        b = f"{prefix}.transformer.resblocks.{i}"
        s += [(f"{b}.attn.in_proj_weight", (3 * w, w), F32), (f"{b}.attn.in_proj_bias", (3 * w,), F32),
              (f"{b}.attn.out_proj.weight", (w, w), F32), (f"{b}.attn.out_proj.bias", (w,), F32)]
        s += ln(f"{b}.ln_1", w)
        s += [(f"{b}.mlp.c_fc.weight", (4 * w, w), F32), (f"{b}.mlp.c_fc.bias", (4 * w,), F32),
              (f"{b}.mlp.c_proj.weight", (w, 4 * w), F32), (f"{b}.mlp.c_proj.bias", (w,), F32)]
        s += ln(f"{b}.ln_2", w)
    if embeddings:
        s += ln(f"{prefix}.ln_post", w)
    deconv = [((w, w, 2, 2), F32), ((w,), F32)]
    s += ln(f"{prefix}.fpn1.0", w)
    s += [(f"{prefix}.fpn1.1.{p}", shape, t) for p, (shape, t) in zip(("weight", "bias"), deconv)]
    s += bn(f"{prefix}.fpn1.2", w)
    s += [(f"{prefix}.fpn1.4.{p}", shape, t) for p, (shape, t) in zip(("weight", "bias"), deconv)]
    s += ln(f"{prefix}.fpn2.0", w)
    s += [(f"{prefix}.fpn2.1.{p}", shape, t) for p, (shape, t) in zip(("weight", "bias"), deconv)]
    s += ln(f"{prefix}.fpn3", w) + ln(f"{prefix}.fpn4.0", w)
    return s


def fpn_head(prefix: str, num_classes: int, ch: int = 256) -> Spec:
    s = conv(f"{prefix}.conv_seg", ch, num_classes, 1)
    for level in range(4):
        for k in range(max(1, level)):
            j = 2 * k if level else 0  # ConvModule, Upsample, ConvModule, ...
            s += conv(f"{prefix}.scale_heads.{level}.{j}.conv", ch, ch, 3, bias=False)
            s += bn(f"{prefix}.scale_heads.{level}.{j}.bn", ch)
    return s


def segmentation_spec(arch: str, num_classes: int = 150) -> Spec:
    if arch not in SEG_ARCHS:
        raise ValueError(f"arch must be one of {SEG_ARCHS}, got {arch!r}")
    dense = arch.startswith("denseclip")
    vit = arch.endswith("vit")
    e = 512 if vit else EMBED_DIM[int(arch.rsplit("_r", 1)[1])]
    s: Spec = []
    if dense:
        s += [("contexts", (1, 8, 512), F32), ("gamma", (e,), F32)]
    if vit:
        s += vit_backbone("backbone", embeddings=dense)
        in_channels = [VIT_WIDTH, VIT_WIDTH, VIT_WIDTH + (num_classes if dense else 0), VIT_WIDTH]
    else:
        s += clip_resnet_trunk("backbone", int(arch.rsplit("_r", 1)[1]))
        if dense:
            s += attnpool("backbone.attnpool", 2048, e, input_resolution=512)
        in_channels = [256, 512, 1024, 2048 + (num_classes if dense else 0)]
    if dense:
        s += reference_text_encoder("text_encoder", e) + context_decoder("context_decoder", e)
    s += fpn("neck", in_channels, start_level=0, extra_on_input=False, num_outs=4)
    s += fpn_head("decode_head", num_classes)
    names = [n for n, _, _ in s]
    assert len(names) == len(set(names)), "duplicate key"
    return s


def segmentation_state_dict(arch: str, num_classes: int = 150, seed: int = 0) -> Dict[str, torch.Tensor]:
    return random_state_dict(segmentation_spec(arch, num_classes), seed)
