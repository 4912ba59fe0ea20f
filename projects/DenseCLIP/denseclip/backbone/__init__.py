from .build import (
    build_clip_backbone,
    build_clip_bottom_up,
    build_clip_fpn_backbone,
    build_clip_retinanet_fpn_backbone,
    build_clip_semantic_fpn_backbone,
    create_clip_from_config,
)
from .clip_resnet import (
    CLIP_DENSE,
    CLIP_GLOBAL,
    CLIPResNet,
    attention_pool_tokens,
    clip_embedding_shapes,
    resize_spatial_pos_embed,
)
from .clip_vit import CLIPViT
from .imagenet_weights import load_bottom_up_weights, torchvision_resnet_to_detectron2
from .language_guided import (
    LanguageGuidedBackbone,
    build_bottom_up,
    build_bottom_up_fpn_backbone,
    build_bottom_up_retinanet_fpn_backbone,
    build_bottom_up_semantic_fpn_backbone,
    build_language_guided_backbone,
    clip_attention_pool,
)
from .timm_backbone import TimmBackbone, build_timm_backbone
