"""What DenseCLIP adds to Detectron2's meta-architectures: its parts (CLIP image encoder, text side,
fused FPN) built from one config, the features they compute, the auxiliary loss, the vocabulary (swap
at inference, per-class tensors matched by name in checkpoints), the recipe's parameter roles, and
the upgrade of first-layout checkpoint names."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.config import CfgNode, configurable
from detectron2.modeling import FPN, Backbone
from detectron2.structures import ImageList, Instances

from .denseclip_backbone import DENSECLIP_BACKBONES, DenseCLIPBackbone
from .fused_fpn import FusedFeatures
from .pixel_text import pixel_text_loss, score_map_probabilities
from .text_side import DenseCLIPTextSide, VocabularySlice, reindex_vocabulary_slice
from .vocabulary import config_for_vocabulary, vocabulary_from_config

logger = logging.getLogger(__name__)


# Parameter-name prefixes of the first layout (everything under one DenseCLIPBackbone), renamed
# when such a checkpoint is loaded.
_FIRST_LAYOUT_RENAMES: Tuple[Tuple[str, str], ...] = (
    ("backbone.image_encoder.", "backbone."),
    ("backbone.text_encoder.", "text_side.prompt_encoder."),
    ("backbone.context_decoder.", "text_side.context_decoder."),
    ("backbone.gamma", "text_side.gamma"),
    ("backbone.fpn.", "fpn."),
)


def upgrade_state_dict_layout(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> bool:
    """Rename, in place, the keys of a checkpoint written with the first model layout; True if any."""
    renamed = False
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        local = key[len(prefix):]
        for old, new in _FIRST_LAYOUT_RENAMES:
            if local.startswith(old):
                state_dict[prefix + new + local[len(old):]] = state_dict.pop(key)
                renamed = True
                break
    return renamed


def denseclip_options(cfg: CfgNode) -> Dict[str, Any]:
    """The meta-architectures' own arguments (besides Detectron2's and the parts)."""
    return {
        "pixel_text_loss_weight": cfg.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT,
        "return_score_maps": cfg.MODEL.DENSECLIP.RETURN_SCORE_MAPS,
    }


def detectron2_arguments(d2_from_config: Callable[[CfgNode], Dict], cfg: CfgNode, num_classes_key: str,
                         kind: str = "thing") -> Dict[str, Any]:
    """Detectron2's ``from_config`` of the base meta-architecture (GeneralizedRCNN, RetinaNet, ...)
    for a DenseCLIP config: the vocabulary (:func:`vocabulary_from_config` with ``kind``, "thing" or
    "stuff") is written into the config the parts and heads are built with
    (MODEL.DENSECLIP.CLASS_NAMES, and ``num_classes_key``, the heads' NUM_CLASSES: its size);
    MODEL.BACKBONE.NAME builds a :class:`DenseCLIPBackbone`, so Detectron2's heads are built on the
    fused FPN's shapes; and that backbone is taken apart into the model's ``backbone`` (the CLIP
    image encoder), ``text_side`` and ``fpn``."""
    features = None
    if cfg.MODEL.BACKBONE.NAME in DENSECLIP_BACKBONES:  # checked first: Detectron2 builds heads on its shapes
        cfg = config_for_vocabulary(cfg, vocabulary_from_config(cfg, kind), num_classes_key)
        ret = d2_from_config(cfg)
        features = ret["backbone"]
    if not isinstance(features, DenseCLIPBackbone):
        raise ValueError(
            f"{cfg.MODEL.META_ARCHITECTURE} reads the image encoder, text side and FPN of a DenseCLIP backbone: "
            f"MODEL.BACKBONE.NAME must build one ({', '.join(DENSECLIP_BACKBONES)}), got '{cfg.MODEL.BACKBONE.NAME}'"
        )
    return {**ret, **features.parts()._asdict(), **denseclip_options(cfg)}


class DenseCLIPFeatures(NamedTuple):
    features: Dict[str, torch.Tensor]  # FPN levels
    text_embeddings: torch.Tensor  # B x K x D
    score_map: torch.Tensor  # B x K x h x w


class DenseCLIPMetaArchMixin:
    """What the DenseCLIP meta-architectures add to Detectron2's: the text side and the fused FPN,
    the auxiliary pixel-text loss, the vocabulary and its swap, and the recipe's parameter groups."""

    backbone: Backbone

    @configurable
    def __init__(self, *, text_side: DenseCLIPTextSide, fpn: FPN, pixel_text_loss_weight: float = 1.0,
                 return_score_maps: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.text_side = text_side
        self.fpn = fpn
        self.pixel_text_loss_weight = pixel_text_loss_weight
        # Inference outputs also hold "score_maps" (MODEL.DENSECLIP.RETURN_SCORE_MAPS; may be toggled).
        self.return_score_maps = return_score_maps
        # Tensors of the vocabulary the model was trained with, kept the first time the vocabulary
        # is swapped so that swapping back is exact.
        self._base_vocabulary: Optional[List[str]] = None
        self._base_tensors: Dict[str, torch.Tensor] = {}

    @property
    def class_names(self) -> List[str]:
        return self.text_side.vocabulary

    def extract_features(self, images: ImageList) -> DenseCLIPFeatures:
        image_features = self.backbone(images.tensor)
        text, score_map = self.text_side(image_features)
        return DenseCLIPFeatures(self.fpn(self.text_side.fuse(image_features, score_map)), text, score_map)

    def pixel_text_losses(self, dense: DenseCLIPFeatures, gt_instances: List[Instances], images: ImageList) -> Dict[str, torch.Tensor]:
        if self.pixel_text_loss_weight <= 0:
            return {}
        loss = pixel_text_loss(self.text_side.score_logits(dense.score_map), gt_instances, images.tensor.shape[-2:])
        return {"loss_pixel_text": loss * self.pixel_text_loss_weight}

    def add_score_maps(self, results: List[Dict], dense: DenseCLIPFeatures, batched_inputs: List[Dict],
                       images: ImageList) -> List[Dict]:
        """With ``return_score_maps``, each output dict gets "score_maps": K x H x W float32
        probabilities ``sigmoid(cosine / tau)`` of the vocabulary's classes (``class_names`` order),
        at the output size of the instances (the input's "height"/"width", else the image's)."""
        if not self.return_score_maps:
            return results
        padded = tuple(images.tensor.shape[-2:])
        # cosine / tau also where the fused score maps are the raw cosines (the segmentation models).
        score_logits = self.text_side.score_logits(dense.score_map)
        for result, logits, inputs, image_size in zip(results, score_logits, batched_inputs, images.image_sizes):
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            result["score_maps"] = score_map_probabilities(logits, padded, tuple(image_size), output_size)
        return results

    # ------------------------------------------------------------------------------- parameters
    def parameter_groups(self) -> Dict[str, List[Tuple[str, nn.Parameter]]]:
        """Parameters by role in the recipe: the CLIP image encoder, CLIP's text tower, the learnable
        text prompt, and the rest (context decoder, gamma, FPN, heads)."""
        roles = {id(p): "image_encoder" for p in self.backbone.parameters()}
        roles.update({id(p): "text_tower" for p in self.text_side.prompt_encoder.clip_text.parameters()})
        if self.text_side.prompt_encoder.context is not None:
            roles[id(self.text_side.prompt_encoder.context)] = "text_prompt"
        groups: Dict[str, List[Tuple[str, nn.Parameter]]] = {k: [] for k in ("image_encoder", "text_tower", "text_prompt", "rest")}
        for name, param in self.named_parameters():
            groups[roles.get(id(param), "rest")].append((name, param))
        return groups

    # ------------------------------------------------------------------------------- vocabulary
    def vocabulary_dependent_parameters(self) -> Dict[str, VocabularySlice]:
        """Tensors holding one entry per class of the vocabulary, by name: the FPN convs that read the
        score-map channels (the lateral conv of the score-map feature and, for RetinaNet, P6 computed
        from it) and the stock heads' per-class outputs (:meth:`_head_vocabulary_parameters`)."""
        feature = self.text_side.score_map_feature
        shape = self.backbone.output_shape()[feature]
        fpn_slice = VocabularySlice(dim=1, prefix=shape.channels)
        names = {f"fpn.fpn_lateral{int(math.log2(shape.stride))}.weight": fpn_slice}
        if getattr(self.fpn.top_block, "in_feature", None) == feature:
            names["fpn.top_block.p6.weight"] = fpn_slice
        names.update(self._head_vocabulary_parameters())
        return names

    def set_vocabulary(self, class_names: List[str]) -> None:
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
        self._set_head_num_classes(len(names))
        logger.info("Vocabulary set to %d classes", len(names))

    def _replace_parameter(self, name: str, value: torch.Tensor) -> None:
        module_name, attr = name.rsplit(".", 1)
        module = self.get_submodule(module_name)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(value.to(old.device), requires_grad=old.requires_grad))
        if isinstance(module, nn.Conv2d) and attr == "weight":
            module.in_channels = value.shape[1]

    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor], checkpoint_vocabulary: Optional[Sequence[str]],
                         fresh_new_classes: bool = False) -> List[str]:
        """Make, in place, a checkpoint's state dict fit this model before it is compared with it:
        first-layout names upgraded (:func:`upgrade_state_dict_layout`), and, when the checkpoint
        records the vocabulary it was trained with, its vocabulary-dependent tensors re-indexed for
        this model's by name: a shared name keeps its trained entries (whatever its position), a
        new name gets the mean of the trained entries or, with ``fresh_new_classes``
        (fine-tuning), this model's freshly initialised ones. Returns the names new to the checkpoint."""
        if upgrade_state_dict_layout(state_dict):
            logger.info("Checkpoint of the first DenseCLIP layout: parameter names upgraded")
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Plain ``load_state_dict`` (e.g. Detectron2's checkpointer) of a first-layout checkpoint:
        # keys renamed, as PointRend does (this project's checkpointer did it in adapt_checkpoint).
        upgrade_state_dict_layout(state_dict, prefix)
        # The loaded weights are the new base of vocabulary swaps (those kept before are stale).
        self._base_vocabulary, self._base_tensors = None, {}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
