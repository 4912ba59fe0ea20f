"""A small DenseCLIP Semantic FPN for CPU tests: the paper's architecture (configs/Base-DenseCLIP-
SemanticFPN.yaml) on RN-tiny, with 64x64 windows and a 2x2 positional grid (64 px / 32)."""
from typing import List, Sequence

import torch

BASE_CONFIG = "Base-DenseCLIP-SemanticFPN.yaml"
CLASSES = ["wall", "sky", "floor"]


def tiny_opts(classes: Sequence[str] = CLASSES, extra: Sequence = ()) -> List:
    return [
        "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
        "MODEL.CLIP.POS_EMBED_GRID", 2, "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 64,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
        "MODEL.DENSECLIP.CLASS_NAMES", list(classes), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(classes),
        "TEST.SEM_SEG.CROP_SIZE", (64, 64), "TEST.SEM_SEG.STRIDE", (40, 40), *extra,
    ]


def label_batch(num_images: int = 2, size=(64, 96), num_classes: int = 3, seed: int = 0) -> List[dict]:
    """Training inputs: images whose label is the brightest channel (learnable), a band ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        label = image[:num_classes].argmax(0)
        label[:4] = 255
        batch.append({"image": image, "sem_seg": label, "height": h, "width": w})
    return batch
