"""What the DenseCLIP meta-architectures add to Detectron2's: the text side and the fused FPN next to
the image encoder (``backbone``), the features they compute, the auxiliary pixel-text loss, the
score-map outputs, and the parameter layout of checkpoints (with the upgrade of first-layout names).
The vocabulary is :class:`~.vocabulary_swap.DenseCLIPVocabulary`'s; how the parts are built from a
config, :mod:`.composition`'s."""
from __future__ import annotations

import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import FPN
from detectron2.structures import ImageList, Instances

from .pixel_text import pixel_text_loss, score_map_probabilities
from .text_side import DenseCLIPTextSide
from .vocabulary_swap import DenseCLIPVocabulary

logger = logging.getLogger(__name__)


# Parameter-name prefixes of the first layout (everything under one DenseCLIP backbone module),
# renamed when such a checkpoint is loaded.
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


class DenseCLIPFeatures(NamedTuple):
    features: Dict[str, torch.Tensor]  # FPN levels
    text_embeddings: torch.Tensor  # B x K x D
    score_map: torch.Tensor  # B x K x h x w


class DenseCLIPMetaArchMixin(DenseCLIPVocabulary):
    """The DenseCLIP side of a meta-architecture: ``backbone`` (Detectron2's argument) is the image
    encoder; ``text_side`` and ``fpn`` are added, with the pixel-text loss and score-map outputs."""

    @configurable
    def __init__(self, *, text_side: DenseCLIPTextSide, fpn: FPN, pixel_text_loss_weight: float = 1.0,
                 return_score_maps: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.text_side = text_side
        self.fpn = fpn
        self.pixel_text_loss_weight = pixel_text_loss_weight
        # Inference outputs also hold "score_maps" (MODEL.DENSECLIP.RETURN_SCORE_MAPS; may be toggled).
        self.return_score_maps = return_score_maps
        self.init_vocabulary()

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

    # ------------------------------------------------------------------------------- checkpoints
    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor], checkpoint_vocabulary: Optional[Sequence[str]],
                         fresh_new_classes: bool = False) -> List[str]:
        """Make, in place, a checkpoint's state dict fit this model before it is compared with it:
        first-layout names upgraded (:func:`upgrade_state_dict_layout`), and its per-class tensors
        re-indexed by name for this model's vocabulary (:meth:`reindex_checkpoint`). Returns the
        names new to the checkpoint."""
        if upgrade_state_dict_layout(state_dict):
            logger.info("Checkpoint of the first DenseCLIP layout: parameter names upgraded")
        return self.reindex_checkpoint(state_dict, checkpoint_vocabulary, fresh_new_classes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Plain ``load_state_dict`` (e.g. Detectron2's checkpointer) of a first-layout checkpoint:
        # keys renamed, as PointRend does (this project's checkpointer did it in adapt_checkpoint).
        upgrade_state_dict_layout(state_dict, prefix)
        # The loaded weights are the new base of vocabulary swaps (those kept before are stale).
        self.init_vocabulary()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
