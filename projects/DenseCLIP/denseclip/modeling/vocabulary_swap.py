"""The vocabulary of a DenseCLIP model: which tensors hold one entry per class, the swap of the
vocabulary at inference, and the re-indexing by name of a checkpoint trained with another one.

The meta-architecture names its head (``vocabulary_head``); the head declares its own per-class
tensors (``vocabulary_parameters``), whether its classifier is the text (``language_guided``) and
how it takes a new class count (``set_num_classes``). The FPN convs that read the score maps are
the meta-architecture's: they are declared here.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.modeling import FPN, Backbone

from .fused_fpn import FusedFeatures
from .text_side import DenseCLIPTextSide

logger = logging.getLogger(__name__)


class VocabularySlice(NamedTuple):
    """Where a tensor holds one entry per class, along ``dim``: ``prefix`` leading entries (e.g. the
    image channels of an FPN conv), then ``groups`` blocks (e.g. one per anchor) of K classes with
    ``per_class`` entries each (4 box deltas, 1 logit), then ``suffix`` trailing ones (background)."""

    dim: int
    prefix: int = 0
    suffix: int = 0
    groups: int = 1
    per_class: int = 1

    def num_classes(self, tensor: torch.Tensor) -> int:
        return (tensor.shape[self.dim] - self.prefix - self.suffix) // (self.groups * self.per_class)


def reindex_vocabulary_slice(
    tensor: torch.Tensor,
    where: VocabularySlice,
    old_vocabulary: Sequence[str],
    new_vocabulary: Sequence[str],
    fill: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``tensor`` whose per-class entries (see :class:`VocabularySlice`), one per name of
    ``old_vocabulary``, are re-ordered by name for ``new_vocabulary``: a known name keeps its entries,
    a new one gets those of ``fill`` (a tensor laid out for ``new_vocabulary``; default: the mean
    over the old vocabulary's entries, a class-agnostic response)."""
    dim, k_old = where.dim, len(old_vocabulary)
    middle = where.groups * k_old * where.per_class
    if tensor.shape[dim] != where.prefix + middle + where.suffix:
        raise ValueError(
            f"tensor of shape {tuple(tensor.shape)} does not hold {k_old} classes along dim {dim} as {where}"
        )
    head = tensor.narrow(dim, 0, where.prefix)
    tail = tensor.narrow(dim, where.prefix + middle, where.suffix)
    rest = tensor.shape[dim + 1:]
    per_class = tensor.narrow(dim, where.prefix, middle).reshape(
        *tensor.shape[:dim], where.groups, k_old, where.per_class, *rest)
    class_dim = dim + 1
    if fill is None:
        fallback = per_class.mean(dim=class_dim, keepdim=True)
        new_entries = None
    else:
        new_entries = fill.narrow(dim, where.prefix, where.groups * len(new_vocabulary) * where.per_class).reshape(
            *tensor.shape[:dim], where.groups, len(new_vocabulary), where.per_class, *rest)
    index = {name: i for i, name in enumerate(old_vocabulary)}
    entries = []
    for j, name in enumerate(new_vocabulary):
        if name in index:
            entries.append(per_class.narrow(class_dim, index[name], 1))
        elif new_entries is not None:
            entries.append(new_entries.narrow(class_dim, j, 1).to(tensor.dtype))
        else:
            entries.append(fallback)
    middle_new = torch.cat(entries, dim=class_dim).reshape(*tensor.shape[:dim], -1, *rest)
    return torch.cat([head, middle_new, tail], dim=dim)


def check_vocabulary_head(head: nn.Module, name_key: str, expected: str) -> nn.Module:
    """``head``, if it declares its per-class tensors (``vocabulary_parameters``, ``language_guided``);
    else an error naming the config key that chose it (``name_key``) and the ``expected`` heads."""
    if not (hasattr(head, "vocabulary_parameters") and hasattr(head, "language_guided")):
        raise ValueError(
            f"{name_key} '{type(head).__name__}' does not declare its per-class tensors (vocabulary_parameters, "
            f"language_guided), which a DenseCLIP meta-architecture needs: expected {expected} (or a subclass)"
        )
    return head


class DenseCLIPVocabulary:
    """What a DenseCLIP meta-architecture does with its vocabulary (a mixin of it, next to
    :class:`~.denseclip_mixin.DenseCLIPMetaArchMixin`, which owns the parts used here)."""

    backbone: Backbone
    text_side: DenseCLIPTextSide
    fpn: FPN
    # Attribute name of the head whose classes follow the vocabulary ("roi_heads", "head", "sem_seg_head").
    vocabulary_head: str

    def init_vocabulary(self) -> None:
        # Tensors of the vocabulary the model was trained with, kept the first time the vocabulary
        # is swapped so that swapping back is exact.
        self._base_vocabulary: Optional[List[str]] = None
        self._base_tensors: Dict[str, torch.Tensor] = {}

    @property
    def class_names(self) -> List[str]:
        return self.text_side.vocabulary

    @property
    def language_guided(self) -> bool:
        """Whether the head's classifier is the text (any vocabulary), not a fixed-size layer."""
        return bool(getattr(self, self.vocabulary_head).language_guided)

    def vocabulary_dependent_parameters(self) -> Dict[str, VocabularySlice]:
        """Tensors holding one entry per class of the vocabulary, by name: the FPN convs that read the
        score-map channels (the lateral conv of the score-map feature and, for RetinaNet, P6 computed
        from it) and the head's own (its ``vocabulary_parameters``)."""
        feature = self.text_side.score_map_feature
        shape = self.backbone.output_shape()[feature]
        fpn_slice = VocabularySlice(dim=1, prefix=shape.channels)
        names = {f"fpn.fpn_lateral{int(math.log2(shape.stride))}.weight": fpn_slice}
        if getattr(self.fpn.top_block, "in_feature", None) == feature:
            names["fpn.top_block.p6.weight"] = fpn_slice
        head = getattr(self, self.vocabulary_head)
        names.update({f"{self.vocabulary_head}.{name}": where for name, where in head.vocabulary_parameters().items()})
        return names

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Detect a new set of classes, given by name, without rebuilding or reloading the model.

        The text embeddings are recomputed (once). The tensors that read the score maps are
        re-indexed by name: a name of the training vocabulary keeps its learned weights, a new name
        gets the mean of the training vocabulary's weights (a class-agnostic response). Requires the
        language-guided heads (MODEL.DENSECLIP.HEAD "language"): stock heads have one learned weight
        vector per training class.
        """
        if not self.language_guided:
            raise RuntimeError(
                "Changing the vocabulary needs the language-guided heads (MODEL.DENSECLIP.HEAD 'language'); "
                "this model uses Detectron2's stock classifier with a fixed number of classes"
            )
        names = list(class_names)
        dependent = self.vocabulary_dependent_parameters()
        base_vocabulary = self._base_vocabulary or self.text_side.vocabulary
        self.text_side.set_vocabulary(names)  # validates (the one check of a vocabulary) before anything changes
        if self._base_vocabulary is None:
            self._base_vocabulary = base_vocabulary
            self._base_tensors = {n: self.get_parameter(n).detach().clone() for n in dependent}
        for name, where in dependent.items():
            new = reindex_vocabulary_slice(self._base_tensors[name], where, self._base_vocabulary, names)
            self._replace_parameter(name, new)
        fused = self.fpn.bottom_up
        assert isinstance(fused, FusedFeatures)
        fused.set_shapes(self.text_side.fused_shapes(self.backbone.output_shape()))
        self.set_num_classes(len(names))
        logger.info("Vocabulary set to %d classes", len(names))

    def set_num_classes(self, num_classes: int) -> None:
        getattr(self, self.vocabulary_head).set_num_classes(num_classes)

    def _replace_parameter(self, name: str, value: torch.Tensor) -> None:
        module_name, attr = name.rsplit(".", 1)
        module = self.get_submodule(module_name)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(value.to(old.device), requires_grad=old.requires_grad))
        if isinstance(module, nn.Conv2d) and attr == "weight":
            module.in_channels = value.shape[1]

    def reindex_checkpoint(self, state_dict: Dict[str, torch.Tensor], checkpoint_vocabulary: Optional[Sequence[str]],
                           fresh_new_classes: bool = False) -> List[str]:
        """Make, in place, the vocabulary-dependent tensors of a checkpoint that records the
        vocabulary it was trained with fit this model's, by name: a shared name keeps its trained
        entries (whatever its position), a new name gets the mean of the trained entries or, with
        ``fresh_new_classes`` (fine-tuning), this model's freshly initialised ones. Returns the names
        new to the checkpoint."""
        vocabulary = self.text_side.vocabulary
        if not checkpoint_vocabulary or list(checkpoint_vocabulary) == vocabulary:
            return []
        current = self.state_dict() if fresh_new_classes else {}
        for name, where in self.vocabulary_dependent_parameters().items():
            if name in state_dict and where.num_classes(state_dict[name]) == len(checkpoint_vocabulary):
                fill = current[name] if fresh_new_classes else None
                state_dict[name] = reindex_vocabulary_slice(state_dict[name], where, checkpoint_vocabulary, vocabulary, fill)
        known = set(checkpoint_vocabulary)
        return [n for n in vocabulary if n not in known]
