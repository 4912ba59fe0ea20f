from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding, select_topk_anchors, select_topk_candidates
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin, build_denseclip_parts, upgrade_state_dict_layout
from .fused_fpn import FusedFeatures, build_fused_fpn
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, TextEmbeddingFastRCNNOutputLayers
from .meta_arch import DenseCLIPRCNN, DenseCLIPRetinaNet, TopKRetinaNet
from .pixel_text import box_target_maps, pixel_text_loss, pixel_text_score_map
from .text_side import DenseCLIPTextSide, TextSideOutput, VocabularySlice, reindex_vocabulary_slice
from .vocabulary import configured_vocabulary, dataset_class_names, resolve_vocabulary
