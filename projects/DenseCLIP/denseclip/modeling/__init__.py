from .dense_decoding import CANDIDATE_SELECTIONS, TopKCandidateDecoding, select_topk_anchors, select_topk_candidates
from .denseclip_backbone import DENSECLIP_BACKBONES, DenseCLIPBackbone, DenseCLIPParts, build_denseclip_parts
from .denseclip_mixin import DenseCLIPFeatures, DenseCLIPMetaArchMixin, upgrade_state_dict_layout
from .fused_fpn import FusedFeatures, build_fused_fpn
from .heads import DenseCLIPROIHeads, LanguageGuidedRetinaNetHead, TextEmbeddingFastRCNNOutputLayers
from .meta_arch import DenseCLIPRCNN, DenseCLIPRetinaNet, TopKRetinaNet
from .pixel_text import box_target_maps, pixel_text_loss, pixel_text_score_map, score_map_probabilities
from .text_side import DenseCLIPTextSide, TextSideOutput, VocabularySlice, reindex_vocabulary_slice
from .vocabulary import check_vocabulary_fits_datasets, config_for_vocabulary, dataset_class_names, vocabulary_from_config
