"""Zero-shot classification of held-out single-object crops by a CLIP: the check that the small CLIP
learned the language of the synthetic shapes (colours and shapes), not only to match its pairs."""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import open_clip
import torch

from ..data.synthetic_captions import object_phrase
from .small_clip import images_to_tensor


@dataclass(frozen=True)
class ZeroShotResult:
    correct: int
    total: int
    num_classes: int

    @property
    def top1(self) -> float:
        return 100.0 * self.correct / self.total

    @property
    def chance(self) -> float:
        return 100.0 / self.num_classes

    def line(self) -> str:
        """The line the pretraining tool ends with."""
        return f"zero-shot top-1 {self.top1:.1f}% on {self.total} held-out crops (chance {self.chance:.1f}%)"


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer_name: str,
    crops: Sequence[Tuple[np.ndarray, int]],
    classes: Sequence[str],
    batch_size: int = 256,
) -> ZeroShotResult:
    """Top-1 accuracy of ``model`` (an open_clip CLIP) classifying ``crops`` ((uint8 RGB image, class
    index) pairs, at the model's input size) among ``classes``, each prompted as a caption names one
    object ("a red circle")."""
    model.eval()
    tokens = open_clip.get_tokenizer(tokenizer_name)([object_phrase(c) for c in classes])
    text = model.encode_text(tokens, normalize=True)
    correct = 0
    for i in range(0, len(crops), batch_size):
        chunk = crops[i:i + batch_size]
        image = model.encode_image(images_to_tensor([c for c, _ in chunk]), normalize=True)
        predicted = (image @ text.T).argmax(1)
        correct += int((predicted == torch.tensor([label for _, label in chunk])).sum())
    return ZeroShotResult(correct, len(crops), len(classes))
