"""State-dict layout of the DenseCLIP reference checkpoints (raoyongming/DenseCLIP, detection/, mmdet 2.17).

Standalone (depends only on torch). ``reference_state_dict(arch, depth)`` returns random tensors with the
key names, shapes, dtypes and (module-registration) order that ``mmcv.runner.save_checkpoint`` writes for
the reference detectors built from

    detection/configs/{retinanet,mask_rcnn}_{denseclip,clip}_r{50,101}_fpn_1x_coco.py

Where each name comes from (reference = detection/denseclip/*.py at commit 5eda47f; mmdet 2.17.0 /
mmcv 1.3.17, the versions the reference README pins):

* top level (DenseCLIP_RetinaNet / DenseCLIP_MaskRCNN, denseclip.py:16-74 / 270-343): own parameters
  ``contexts`` (1, 13-5=8, 512) and ``gamma`` (text_dim,) come first in state_dict (a module saves its own
  parameters before its children), then children in registration order: backbone, text_encoder,
  context_decoder, neck, bbox_head | rpn_head, roi_head.  ``texts`` is a plain attribute (not saved).
  The CLIP baselines are stock mmdet ``RetinaNet`` / ``MaskRCNN``: backbone, neck, heads only.
* backbone: CLIPResNetWithAttention (models.py:186-219) or CLIPResNet (models.py:107-137, no attnpool):
  conv1/bn1/conv2/bn2/conv3/bn3 stem, layer1..4 of Bottleneck (models.py:11-39) with children
  conv1, bn1, conv2, bn2, (avgpool), conv3, bn3, (relu), downsample = Sequential("-1" AvgPool2d, "0" conv,
  "1" bn).  A block has ``downsample`` when stride > 1 or inplanes != 4*planes, i.e. block 0 of every
  stage (also layer1.0, where stride is 1 but 64 != 256).  BatchNorm2d saves weight, bias,
  running_mean, running_var, num_batches_tracked (int64, shape ()); train.py:184 converts the backbone to
  SyncBatchNorm, which saves the same keys.
* attnpool (models.py:57-67): positional_embedding ((1344//32)**2 + 1 = 1765, 2048), k_proj, q_proj,
  v_proj (2048->2048), c_proj (2048->output_dim: 1024 for RN50, 512 for RN101), heads 32.
* text_encoder: CLIPTextContextEncoder (models.py:610-639): own params positional_embedding (13, 512) and
  text_projection (512, embed_dim) first, then transformer.resblocks.i (ResidualAttentionBlock,
  models.py:318-330: attn = nn.MultiheadAttention -> in_proj_weight, in_proj_bias, out_proj.*; ln_1;
  mlp.c_fc, mlp.c_proj; ln_2), token_embedding (49408, 512), ln_final.  attn_mask is a plain attribute.
* context_decoder: ContextDecoder (models.py:728-757) with TransformerDecoderLayer (models.py:392-413)
  and Attention (models.py:357-372; q/k/v_proj without bias, proj with bias).
* neck: mmdet FPN (mmdet/models/necks/fpn.py:106-149), every conv a ConvModule without norm
  (-> ``.conv.weight`` + ``.conv.bias``, mmcv conv_module.py:104-105 bias='auto' -> True).
* heads: RetinaHead (retina_head.py:61-92), RPNHead (rpn_head.py:55-59), Shared2FCBBoxHead
  (bbox_head.py:67-81 + convfc_bbox_head.py:58-60,120-150), FCNMaskHead (fcn_mask_head.py:67-111).
"""
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

Spec = List[Tuple[str, Tuple[int, ...], torch.dtype]]
F32 = torch.float32
I64 = torch.int64

ARCHS = ("retinanet_denseclip", "mask_rcnn_denseclip", "retinanet_clip", "mask_rcnn_clip")
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# Reference configs: RN50 output_dim / embed_dim / visual_dim / text_dim 1024; RN101 512.
EMBED_DIM = {50: 1024, 101: 512}
INPUT_RESOLUTION = 1344
TEXT_CONTEXT_LENGTH = 13  # text_encoder.context_length
NAME_CONTEXT_LENGTH = 5  # model.context_length (tokenize length of a class name incl. SOT/EOT)
TOKEN_EMBED_DIM = 512
VOCAB = 49408

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed',
    'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave',
    'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')


# ----------------------------------------------------------------------------------- building blocks
def _p(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def bn(prefix: str, c: int) -> Spec:
    return [(_p(prefix, "weight"), (c,), F32), (_p(prefix, "bias"), (c,), F32),
            (_p(prefix, "running_mean"), (c,), F32), (_p(prefix, "running_var"), (c,), F32),
            (_p(prefix, "num_batches_tracked"), (), I64)]


def ln(prefix: str, c: int) -> Spec:
    return [(_p(prefix, "weight"), (c,), F32), (_p(prefix, "bias"), (c,), F32)]


def linear(prefix: str, cin: int, cout: int, bias: bool = True) -> Spec:
    out = [(_p(prefix, "weight"), (cout, cin), F32)]
    if bias:
        out.append((_p(prefix, "bias"), (cout,), F32))
    return out


def conv(prefix: str, cin: int, cout: int, k: int, bias: bool = True) -> Spec:
    out = [(_p(prefix, "weight"), (cout, cin, k, k), F32)]
    if bias:
        out.append((_p(prefix, "bias"), (cout,), F32))
    return out


def conv_module(prefix: str, cin: int, cout: int, k: int) -> Spec:
    """mmcv ConvModule without norm: child ``conv`` with bias (bias='auto' and no norm)."""
    return conv(_p(prefix, "conv"), cin, cout, k, bias=True)


# ----------------------------------------------------------------------------------- backbone
def bottleneck(prefix: str, inplanes: int, planes: int, stride: int) -> Spec:
    s = conv(_p(prefix, "conv1"), inplanes, planes, 1, bias=False) + bn(_p(prefix, "bn1"), planes)
    s += conv(_p(prefix, "conv2"), planes, planes, 3, bias=False) + bn(_p(prefix, "bn2"), planes)
    s += conv(_p(prefix, "conv3"), planes, planes * 4, 1, bias=False) + bn(_p(prefix, "bn3"), planes * 4)
    if stride > 1 or inplanes != planes * 4:
        # Sequential(OrderedDict([("-1", AvgPool2d), ("0", Conv2d), ("1", BatchNorm2d)]))
        s += conv(_p(prefix, "downsample.0"), inplanes, planes * 4, 1, bias=False)
        s += bn(_p(prefix, "downsample.1"), planes * 4)
    return s


def clip_resnet_trunk(prefix: str, depth: int, width: int = 64) -> Spec:
    s = conv(_p(prefix, "conv1"), 3, width // 2, 3, bias=False) + bn(_p(prefix, "bn1"), width // 2)
    s += conv(_p(prefix, "conv2"), width // 2, width // 2, 3, bias=False) + bn(_p(prefix, "bn2"), width // 2)
    s += conv(_p(prefix, "conv3"), width // 2, width, 3, bias=False) + bn(_p(prefix, "bn3"), width)
    inplanes = width
    for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
        planes = width * 2 ** stage
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            s += bottleneck(_p(prefix, f"layer{stage + 1}.{b}"), inplanes, planes, stride)
            inplanes = planes * 4
    return s


def attnpool(prefix: str, embed_dim: int, output_dim: int, input_resolution: int = INPUT_RESOLUTION) -> Spec:
    grid = input_resolution // 32
    s: Spec = [(_p(prefix, "positional_embedding"), (grid * grid + 1, embed_dim), F32)]
    for name in ("k_proj", "q_proj", "v_proj"):
        s += linear(_p(prefix, name), embed_dim, embed_dim)
    s += linear(_p(prefix, "c_proj"), embed_dim, output_dim)
    return s


# ----------------------------------------------------------------------------------- text side
def text_encoder(prefix: str, embed_dim: int, width: int = 512, layers: int = 12,
                 context_length: int = TEXT_CONTEXT_LENGTH) -> Spec:
    s: Spec = [(_p(prefix, "positional_embedding"), (context_length, width), F32),
               (_p(prefix, "text_projection"), (width, embed_dim), F32)]
    for i in range(layers):
        b = _p(prefix, f"transformer.resblocks.{i}")
        s += [(f"{b}.attn.in_proj_weight", (3 * width, width), F32),
              (f"{b}.attn.in_proj_bias", (3 * width,), F32)]
        s += linear(f"{b}.attn.out_proj", width, width)
        s += ln(f"{b}.ln_1", width)
        s += linear(f"{b}.mlp.c_fc", width, 4 * width) + linear(f"{b}.mlp.c_proj", 4 * width, width)
        s += ln(f"{b}.ln_2", width)
    s += [(_p(prefix, "token_embedding.weight"), (VOCAB, width), F32)]
    s += ln(_p(prefix, "ln_final"), width)
    return s


def context_decoder(prefix: str, visual_dim: int, width: int = 256, layers: int = 3) -> Spec:
    s = ln(_p(prefix, "memory_proj.0"), visual_dim) + linear(_p(prefix, "memory_proj.1"), visual_dim, width)
    s += ln(_p(prefix, "memory_proj.2"), width)
    s += ln(_p(prefix, "text_proj.0"), visual_dim) + linear(_p(prefix, "text_proj.1"), visual_dim, width)
    for i in range(layers):
        d = _p(prefix, f"decoder.{i}")
        for att in ("self_attn", "cross_attn"):
            for name in ("q_proj", "k_proj", "v_proj"):
                s += linear(f"{d}.{att}.{name}", width, width, bias=False)
            s += linear(f"{d}.{att}.proj", width, width)
        for name in ("norm1", "norm2", "norm3"):
            s += ln(f"{d}.{name}", width)
        s += linear(f"{d}.mlp.0", width, 4 * width) + linear(f"{d}.mlp.3", 4 * width, width)
    s += ln(_p(prefix, "out_proj.0"), width) + linear(_p(prefix, "out_proj.1"), width, visual_dim)
    return s


# ----------------------------------------------------------------------------------- neck and heads
def fpn(prefix: str, in_channels: List[int], start_level: int, extra_on_input: bool, num_outs: int = 5,
        out: int = 256) -> Spec:
    s: Spec = []
    levels = range(start_level, len(in_channels))
    # lateral_convs and fpn_convs are two ModuleLists, lateral first (fpn.py:106-107)
    for j, i in enumerate(levels):
        s += conv_module(_p(prefix, f"lateral_convs.{j}"), in_channels[i], out, 1)
    n = len(levels)
    for j in range(n):
        s += conv_module(_p(prefix, f"fpn_convs.{j}"), out, out, 3)
    if extra_on_input:
        for k in range(num_outs - n):
            cin = in_channels[-1] if k == 0 else out
            s += conv_module(_p(prefix, f"fpn_convs.{n + k}"), cin, out, 3)
    # interleave order as registered: laterals and fpn_convs are appended in the same loop but live in
    # two ModuleLists, so state_dict lists all lateral_convs first, then all fpn_convs.
    return s


def retina_head(prefix: str, num_classes: int, num_anchors: int = 9, ch: int = 256, stacked: int = 4) -> Spec:
    s: Spec = []
    for i in range(stacked):
        s += conv_module(_p(prefix, f"cls_convs.{i}"), ch, ch, 3)
    for i in range(stacked):
        s += conv_module(_p(prefix, f"reg_convs.{i}"), ch, ch, 3)
    s += conv(_p(prefix, "retina_cls"), ch, num_anchors * num_classes, 3)
    s += conv(_p(prefix, "retina_reg"), ch, num_anchors * 4, 3)
    return s


def rpn_head(prefix: str, num_anchors: int = 3, ch: int = 256) -> Spec:
    return (conv(_p(prefix, "rpn_conv"), ch, ch, 3) + conv(_p(prefix, "rpn_cls"), ch, num_anchors, 1)
            + conv(_p(prefix, "rpn_reg"), ch, num_anchors * 4, 1))


def roi_head(prefix: str, num_classes: int, ch: int = 256, fc: int = 1024, roi: int = 7) -> Spec:
    b = _p(prefix, "bbox_head")
    # BBoxHead.__init__ registers fc_cls/fc_reg first; ConvFCBBoxHead re-assigns them later (same slot).
    s = linear(f"{b}.fc_cls", fc, num_classes + 1) + linear(f"{b}.fc_reg", fc, 4 * num_classes)
    s += linear(f"{b}.shared_fcs.0", ch * roi * roi, fc) + linear(f"{b}.shared_fcs.1", fc, fc)
    m = _p(prefix, "mask_head")
    for i in range(4):
        s += conv_module(f"{m}.convs.{i}", ch, ch, 3)
    # ConvTranspose2d(256, 256, 2, stride 2): weight (in, out, 2, 2)
    s += [(f"{m}.upsample.weight", (ch, ch, 2, 2), F32), (f"{m}.upsample.bias", (ch,), F32)]
    s += conv(f"{m}.conv_logits", ch, num_classes, 1)
    return s


# ----------------------------------------------------------------------------------- whole models
def reference_spec(arch: str, depth: int, num_classes: int = 80) -> Spec:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth must be 50 or 101, got {depth}")
    dense = arch.endswith("_denseclip")
    retina = arch.startswith("retinanet")
    e = EMBED_DIM[depth]
    s: Spec = []
    if dense:
        s += [("contexts", (1, TEXT_CONTEXT_LENGTH - NAME_CONTEXT_LENGTH, TOKEN_EMBED_DIM), F32),
              ("gamma", (e,), F32)]
    s += clip_resnet_trunk("backbone", depth)
    if dense:
        s += attnpool("backbone.attnpool", 2048, e)
        s += text_encoder("text_encoder", e)
        s += context_decoder("context_decoder", e)
    c5 = 2048 + (num_classes if dense else 0)
    in_channels = [256, 512, 1024, c5]
    if retina:
        s += fpn("neck", in_channels, start_level=1, extra_on_input=True)
        s += retina_head("bbox_head", num_classes)
    else:
        s += fpn("neck", in_channels, start_level=0, extra_on_input=False)
        s += rpn_head("rpn_head")
        s += roi_head("roi_head", num_classes)
    names = [n for n, _, _ in s]
    assert len(names) == len(set(names)), "duplicate key"
    return s


def reference_state_dict(arch: str, depth: int, num_classes: int = 80, seed: int = 0) -> Dict[str, torch.Tensor]:
    return random_state_dict(reference_spec(arch, depth, num_classes), seed)


def random_state_dict(spec: Spec, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Seeded random tensors for a key layout: integer counters, positive BN variances, small weights."""
    g = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = OrderedDict()
    for name, shape, dtype in spec:
        if dtype == I64:
            out[name] = torch.randint(0, 100000, shape, generator=g, dtype=I64)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) + 0.5
        else:
            out[name] = torch.randn(shape, generator=g) * 0.02
    return out


def reference_checkpoint(arch: str, depth: int, num_classes: int = 80, seed: int = 0) -> dict:
    """What mmcv 1.3.17 ``save_checkpoint`` writes (checkpoint.py:654-677; EpochBasedRunner.save_checkpoint
    adds epoch/iter and the runner meta; train.py:171-173 adds mmdet_version and CLASSES). Published
    checkpoints may also carry an ``optimizer`` entry (omitted here)."""
    classes = COCO_CLASSES if num_classes == 80 else tuple(f"class_{i}" for i in range(num_classes))
    name = f"{arch.split('_')[0] if arch.startswith('retinanet') else 'mask_rcnn'}_" \
           f"{arch.rsplit('_', 1)[1]}_r{depth}_fpn_1x_coco.py"
    meta = {
        "env_info": "sys.platform: linux\nPython: 3.8\nPyTorch: 1.8.0\nMMCV: 1.3.17\nMMDetection: 2.17.0",
        "config": f"# config text of {name}\n",
        "seed": None,
        "exp_name": name,
        "mmdet_version": "2.17.0",
        "CLASSES": classes,
        "epoch": 12,
        "iter": 87960,
        "mmcv_version": "1.3.17",
        "time": "Mon Jan  3 00:00:00 2022",
        "hook_msgs": {},
    }
    return {"meta": meta, "state_dict": reference_state_dict(arch, depth, num_classes, seed)}


def count_parameters(arch: str, depth: int, num_classes: int = 80, include_text_encoder: bool = False) -> int:
    """Learnable parameters (BN running stats / num_batches_tracked excluded)."""
    total = 0
    for name, shape, _ in reference_spec(arch, depth, num_classes):
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        if name.startswith("text_encoder.") and not include_text_encoder:
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


if __name__ == "__main__":
    paper = {("retinanet_clip", 50): 38, ("retinanet_denseclip", 50): 60, ("retinanet_clip", 101): 57,
             ("retinanet_denseclip", 101): 78, ("mask_rcnn_clip", 50): 44, ("mask_rcnn_denseclip", 50): 67,
             ("mask_rcnn_clip", 101): 63, ("mask_rcnn_denseclip", 101): 84}
    print(f"{'arch':22s} {'depth':>5s} {'keys':>6s} {'params w/o text (M)':>20s} {'with text (M)':>14s} {'paper':>6s}")
    for arch in ARCHS:
        for depth in (50, 101):
            spec = reference_spec(arch, depth)
            p = count_parameters(arch, depth)
            pt = count_parameters(arch, depth, include_text_encoder=True)
            print(f"{arch:22s} {depth:5d} {len(spec):6d} {p / 1e6:20.2f} {pt / 1e6:14.2f} {paper[(arch, depth)]:6d}")
