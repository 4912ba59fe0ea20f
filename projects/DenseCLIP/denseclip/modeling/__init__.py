from .denseclip_backbone import (
    SCORE_MAP,
    TEXT_EMBEDDINGS,
    DenseCLIPBackbone,
    build_denseclip_fpn_backbone,
    build_denseclip_retinanet_fpn_backbone,
)
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, TextEmbeddingFastRCNNOutputLayers
from .dense_decoding import TopKCandidateDecoding, select_topk_candidates
from .meta_arch import DenseCLIPRCNN, DenseCLIPRetinaNet, TopKRetinaNet
from .pixel_text import box_target_maps, pixel_text_loss, pixel_text_score_map
from .vocabulary import resolve_class_names
