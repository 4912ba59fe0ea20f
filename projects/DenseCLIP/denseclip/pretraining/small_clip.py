"""Contrastive pretraining of a small open_clip CLIP on the synthetic image-caption pairs.

Everything CLIP-specific is open_clip's own: the model (``open_clip.create_model`` on the project's
RN-tiny architecture, denseclip/model_configs/RN-tiny.json, at a small input size), the tokenizer and
the contrastive loss (``open_clip.loss.ClipLoss``). This module only feeds it: the seeded pairs of
denseclip.data.caption_pairs, CLIP's pixel normalisation, AdamW with a warm-up and a cosine decay,
and open_clip's clamp of the logit scale at 100 after every step.
"""
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..clip_loading import register_model_config, without_open_clip_random_init_warning
from ..data.synthetic_captions import caption_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmallCLIPSettings:
    """Everything the pretrained weights depend on (the cache is keyed on these)."""

    model_name: str = "RN-tiny"
    model_config_file: str = "RN-tiny.json"
    # Input side of the pretraining images (the architecture's 224 is too slow for 2 CPU cores);
    # the attention pool's positional grid is image_size / 32 on a side.
    image_size: int = 96
    num_pairs: int = 4000
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    seed: int = 0
    # Held-out crops per class for the zero-shot check.
    crops_per_class: int = 8

    def as_dict(self) -> Dict:
        return asdict(self)


def create_small_clip(settings: SmallCLIPSettings) -> torch.nn.Module:
    """The open_clip model of ``settings`` (random weights; forward returns a dict of features)."""
    name = register_model_config(settings.model_config_file)
    if name != settings.model_name:
        raise ValueError(f"model config {settings.model_config_file} defines {name!r}, not {settings.model_name!r}")
    # Quiet: open_clip warns that the model is random, also when the caller loads weights right after.
    with without_open_clip_random_init_warning():
        return open_clip.create_model(
            name, pretrained=None, force_image_size=settings.image_size, force_quick_gelu=True, output_dict=True
        )


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, H, W, 3) -> float (N, 3, H, W) normalised with CLIP's pixel statistics."""
    x = x.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB (H, W, 3) arrays -> the model's normalised input batch."""
    return normalize_pixels(torch.from_numpy(np.stack(images)))


def _lr_at(step: int, settings: SmallCLIPSettings) -> float:
    """Linear warm-up, then cosine decay to 0 (open_clip's training recipe)."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, settings: SmallCLIPSettings) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings and the logit scale (open_clip's rule:
    parameters with fewer than 2 dimensions, and those named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6)


def make_training_pairs(settings: SmallCLIPSettings) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """(uint8 images (N, H, W, 3), token ids (N, 77), captions) of the seeded caption stream."""
    pairs = caption_pairs(settings.num_pairs, settings.image_size, seed=settings.seed)
    captions = [c for _, c in pairs]
    register_model_config(settings.model_config_file)  # the tokenizer reads the model's config
    tokenizer = open_clip.get_tokenizer(settings.model_name)
    images = torch.from_numpy(np.stack([im for im, _ in pairs]))
    return images, tokenizer(captions), captions


def pretrain(
    settings: SmallCLIPSettings,
    images: torch.Tensor,
    tokens: torch.Tensor,
    log: Optional[Callable[[str], None]] = None,
    log_period: int = 25,
) -> Tuple[torch.nn.Module, List[float]]:
    """Train a new small CLIP on the pairs for ``settings.steps`` steps; returns it (in eval mode)
    and the loss of every step. Seeded: the same settings give the same weights on a machine."""
    torch.manual_seed(settings.seed)
    model = create_small_clip(settings)
    model.train()
    loss_fn = open_clip.loss.ClipLoss()
    optimizer = _optimizer(model, settings)
    order = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.batch_size, len(images))
    permutation, cursor, losses = torch.randperm(len(images), generator=order), 0, []
    start = time.perf_counter()
    for step in range(settings.steps):
        if cursor + batch > len(images):
            permutation, cursor = torch.randperm(len(images), generator=order), 0
        index = permutation[cursor:cursor + batch]
        cursor += batch
        x = normalize_pixels(images[index])
        # Vertical flips keep the captions true (they name the objects from left to right).
        flip = torch.rand(len(index), generator=order) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        out = model(x, tokens[index])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log is not None and (step % log_period == 0 or step == settings.steps - 1):
            log(f"step {step + 1}/{settings.steps}: contrastive loss {loss.item():.3f} "
                f"(batch {batch}, logit scale {model.logit_scale.exp().item():.1f}, {time.perf_counter() - start:.0f} s)")
    return model.eval(), losses
