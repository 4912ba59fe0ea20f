#!/usr/bin/env python
"""Time and memory of DenseCLIP's text side per training iteration as the vocabulary grows (issue 28:
does training with LVIS's 1203 names fit a 16 GB GPU at 2 images per GPU?).

One training step of everything whose cost grows with the number of names K, at the COCO/LVIS input
size: the learnable prompts through CLIP's text tower (forward and backward: the context vectors
learn), the context decoder (text queries over the image's tokens), the pixel-text score maps and
the auxiliary pixel-text loss at stride 4 (B x K x H/4 x W/4 logits, targets and weights), with
random CLIP weights and image features of the right shapes. Each vocabulary size runs in its own
process, so that its peak memory is its own. Reported per size, and as ratios to the first size:

- seconds per step (median of --repeats after one warm-up step; CPU),
- MB of tensors autograd keeps for the backward pass (exact, device-independent: what the step's
  activations take on a GPU too),
  of which the text tower's (prompts through CLIP's text transformer) and the pixel-text loss's,
- MB of peak resident-memory growth of the process over the steps (CPU allocator: saved tensors,
  transient buffers and gradients together; what a GPU would need on top of the rest of the model).

    python tools/text_side_cost.py                       # K = 80 (COCO) and 1203 (LVIS), RN50, 2 x 800x1344
    python tools/text_side_cost.py --names 80 866 1203 --repeats 3
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "projects" / "DenseCLIP"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _names(k: int):
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    names = [c["name"].replace("_", " ") for c in LVIS_CATEGORIES]
    if k > len(names):
        raise SystemExit(f"--names: at most {len(names)} (LVIS v1's), got {k}")
    return names[:k]


def measure(k: int, model_name: str, batch: int, height: int, width: int, repeats: int) -> dict:
    """One process, one vocabulary size: the step's seconds, saved-tensor MB and peak RSS growth."""
    import open_clip
    import torch
    from detectron2.structures import Boxes, Instances

    from denseclip.modeling.pixel_text import pixel_text_loss
    from denseclip.modeling.text_side import DenseCLIPTextSide
    from denseclip.text import ContextDecoder, PromptTextEncoder

    torch.manual_seed(0)
    clip = open_clip.create_model(model_name, pretrained=None)
    embed_dim = clip.text_projection.shape[1]
    # The language-guided configs' prompts: 8 learnable context vectors, names of up to 67 tokens.
    encoder = PromptTextEncoder(clip, n_context=8, name_context_length=69, context_length=77)
    text_side = DenseCLIPTextSide(encoder, ContextDecoder(embed_dim), _names(k), embed_dim=embed_dim).train()
    del clip.visual
    g = torch.Generator().manual_seed(0)
    h32, w32 = height // 32, width // 32
    dense = torch.randn(batch, embed_dim, h32, w32, generator=g, requires_grad=True)
    global_embed = torch.randn(batch, embed_dim, generator=g, requires_grad=True)
    instances = []
    for _ in range(batch):
        inst = Instances((height, width))
        xy = torch.rand(10, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        inst.gt_boxes = Boxes(torch.cat([xy, xy + torch.tensor([width * 0.25, height * 0.25])], dim=1))
        inst.gt_classes = torch.randint(0, k, (10,), generator=g)
        instances.append(inst)

    saved: dict = {}

    def pack(tensor):
        if tensor.device.type == "cpu" and tensor.numel():
            saved[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    def step() -> float:
        saved.clear()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = text_side({"clip_dense": dense, "clip_global": global_embed})
            loss = pixel_text_loss(text_side.score_logits(out.score_map), instances, (height, width))
            loss = loss + out.text_embeddings.float().pow(2).mean() * 1e-3  # stands in for the classifier losses
        loss.backward()
        return time.perf_counter() - start

    def saved_mb(fn) -> float:
        """MB autograd keeps for the backward pass of ``fn()`` alone."""
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(saved.values()) / 2**20

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up
    seconds = [step() for _ in range(repeats)]
    total_mb = sum(saved.values()) / 2**20
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    score_map = text_side({"clip_dense": dense, "clip_global": global_embed}).score_map.detach().requires_grad_()
    return {"names": k, "seconds": statistics.median(seconds), "saved_mb": total_mb,
            "text_tower_mb": saved_mb(text_side.class_text_embeddings),
            "loss_mb": saved_mb(lambda: pixel_text_loss(text_side.score_logits(score_map), instances, (height, width))),
            "peak_rss_growth_mb": max(rss_after - rss_before, 0) / 1024, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, nargs="+", default=[80, 1203], help="vocabulary sizes (LVIS names); the first is the baseline")
    parser.add_argument("--model", default="RN50", help="open_clip architecture of the text tower and embedding size")
    parser.add_argument("--batch", type=int, default=2, help="images per GPU")
    parser.add_argument("--size", default="800x1344", help="padded input HxW")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    if args.one is not None:
        print(json.dumps(measure(args.one, args.model, args.batch, height, width, args.repeats)))
        return
    rows = []
    for k in args.names:
        cmd = [sys.executable, __file__, "--one", str(k), "--model", args.model, "--batch", str(args.batch),
               "--size", args.size, "--repeats", str(args.repeats)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"Text side per training step: {args.model} text tower + context decoder + pixel-text loss, "
          f"{args.batch} x {height}x{width}, CPU ({base['threads']} threads)")
    print("| names | s / step | x | saved for backward (MB) | x | of which text tower | of which pixel-text loss | "
          "peak RSS growth (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['names']} | {r['seconds']:.2f} | {r['seconds'] / base['seconds']:.1f} | {r['saved_mb']:.0f} | "
              f"{r['saved_mb'] / base['saved_mb']:.1f} | {r['text_tower_mb']:.0f} | {r['loss_mb']:.0f} | "
              f"{r['peak_rss_growth_mb']:.0f} |")


if __name__ == "__main__":
    main()
