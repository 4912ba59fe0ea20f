"""Config keys of the DenseCLIP project, added to a Detectron2 ``CfgNode`` by ``add_denseclip_config``."""
from detectron2.config import CfgNode as CN

# CLIP's pixel statistics (RGB, 0-255 scale), used by every config of this project.
CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]


def add_denseclip_config(cfg: CN) -> None:
    """Add every key this project reads. Call it on ``get_cfg()`` before merging a YAML file."""
    _C = cfg

    # ---------------------------------------------------------------- CLIP image/text towers
    _C.MODEL.CLIP = CN()
    # Any open_clip architecture name with a ModifiedResNet ("RN50", "RN101", "RN50x4") or a
    # ViT ("ViT-B-16") vision tower.
    _C.MODEL.CLIP.MODEL_NAME = "RN50"
    # Optional JSON file with a custom open_clip architecture (registered under MODEL_NAME);
    # used by the small CPU quickstart model.
    _C.MODEL.CLIP.MODEL_CONFIG_FILE = ""
    # "" = random init (nothing downloads); an open_clip pretrained tag such as "openai"; or a
    # local file (OpenAI JIT archive, open_clip state dict, or .safetensors).
    _C.MODEL.CLIP.PRETRAINED = ""
    # OpenAI's CLIP weights were trained with QuickGELU in the text transformer.
    _C.MODEL.CLIP.QUICK_GELU = True
    # Optional sha256 of the local PRETRAINED file, checked before loading.
    _C.MODEL.CLIP.PRETRAINED_SHA256 = ""
    # "BN" (trainable BatchNorm), "SyncBN" (synchronised across processes when there are more than
    # one, plain BN otherwise; the reference recipe) or "FrozenBN".
    _C.MODEL.CLIP.NORM = "SyncBN"
    # Stages (stem=1, res2=2, ...) frozen from the start; 0 trains everything (reference recipe).
    _C.MODEL.CLIP.FREEZE_AT = 0
    _C.MODEL.CLIP.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # CLIP backbones (build_clip_*): keep the attention pool, whose dense/global embeddings the
    # CLIP backbone then outputs too. The "CLIP baseline" configs drop it, as the paper's RN50-CLIP
    # rows do; DenseCLIP's meta-architectures always keep it.
    _C.MODEL.CLIP.WITH_ATTENTION_POOL = False
    # CLIP ResNets: how the attention pool's positional embedding (CLIP's 7x7 grid) fits a res5 grid
    # of any size. "interpolate" (this project's default): bicubic resize of CLIP's grid to every
    # input, any input size. "grid_crop" (the reference): resized once, bilinearly, to a trainable
    # POS_EMBED_GRID x POS_EMBED_GRID grid when the model is built; every input uses its top-left block
    # (inputs up to 32 x POS_EMBED_GRID px; 42 -> 1344, the reference's input resolution).
    # "grid_interpolate" (the reference's segmentation models, ResNets and ViTs): resized once,
    # bilinearly, to a trainable POS_EMBED_GRID grid (16 for 512 px crops, 40 for the ViT's 640 px),
    # then bilinearly resized to every input's grid (the identity at the training crop size).
    _C.MODEL.CLIP.POS_EMBED_MODE = "interpolate"
    _C.MODEL.CLIP.POS_EMBED_GRID = 42
    # ViT only: strides of the simple feature pyramid built from the last block's tokens.
    _C.MODEL.CLIP.VIT_PYRAMID_SCALES = [4.0, 2.0, 1.0, 0.5]
    # ViT only: "simple" (ViTDet: every level from the last block, channels halved per 2x upsampling,
    # LayerNorm) or "denseclip" (the reference's segmentation backbone: level i from the block
    # VIT_OUT_INDICES[i], GroupNorm(1) then ConvTranspose at full width, BatchNorm+GELU in the 4x branch).
    _C.MODEL.CLIP.VIT_PYRAMID = "simple"
    _C.MODEL.CLIP.VIT_OUT_INDICES = [3, 5, 7, 11]
    # ViT only: stochastic depth, linearly increasing over the blocks up to this rate (0 = none).
    _C.MODEL.CLIP.DROP_PATH_RATE = 0.0
    # ViT only: add CLIP's class embedding to the class position as well as to the class token, as the
    # reference's CLIPVisionTransformer does (its bug #20, kept for the released checkpoints).
    _C.MODEL.CLIP.VIT_CLASS_EMBED_TWICE = False

    # ---------------------------------------------------------------- any backbone (issue 20)
    # DenseCLIP on an image encoder that is not CLIP's (paper section 4.3): a Detectron2 backbone
    # ("bottom-up": res2..res5) plus a new, randomly initialised CLIP-style attention pool on its last
    # stage that maps it into the text tower's embedding space (MODEL.BACKBONE.NAME
    # "build_language_guided_backbone" of a DenseCLIP meta-architecture); the plain baselines put the same bottom-up under an FPN
    # (MODEL.BACKBONE.NAME "build_bottom_up_fpn_backbone", "build_bottom_up_retinanet_fpn_backbone",
    # "build_bottom_up_semantic_fpn_backbone").
    _C.MODEL.ANY_BACKBONE = CN()
    # A registered Detectron2 backbone emitting res2..res5: "build_resnet_backbone" (Detectron2's
    # ResNets, MODEL.RESNETS) or "build_timm_backbone" (timm models, MODEL.TIMM).
    _C.MODEL.ANY_BACKBONE.BOTTOM_UP = "build_resnet_backbone"
    # ImageNet weights of the bottom-up only, loaded when the model is built: a torchvision ResNet
    # state dict (.pth), a Detectron2/Caffe2 .pkl (e.g. detectron2://ImageNetPretrained/MSRA/R-50.pkl or
    # the output of Detectron2's tools/convert-torchvision-to-d2.py), or a timm checkpoint
    # (.pth/.bin/.safetensors). "" = random initialisation.
    _C.MODEL.ANY_BACKBONE.WEIGHTS = ""
    # The bottom-up's BatchNorm layers: "BN", "SyncBN" (synchronised when there are several processes,
    # as MODEL.CLIP.NORM) or "FrozenBN". Swin has LayerNorms only.
    _C.MODEL.ANY_BACKBONE.NORM = "SyncBN"
    # The attention pool: heads (0 = CLIP's convention, channels / 64), output width (0 = the text
    # tower's embedding dimension), and its positional grid (POS_EMBED_GRID x POS_EMBED_GRID + 1 class
    # position; 7 = CLIP's at 224 px) fitted to each input ("interpolate") or cropped ("grid_crop", as
    # MODEL.CLIP.POS_EMBED_MODE).
    _C.MODEL.ANY_BACKBONE.POOL_HEADS = 0
    _C.MODEL.ANY_BACKBONE.POOL_DIM = 0
    _C.MODEL.ANY_BACKBONE.POS_EMBED_GRID = 7
    _C.MODEL.ANY_BACKBONE.POS_EMBED_MODE = "interpolate"

    # timm image encoders as Detectron2 bottom-ups ("build_timm_backbone").
    _C.MODEL.TIMM = CN()
    _C.MODEL.TIMM.MODEL_NAME = "swin_tiny_patch4_window7_224"
    _C.MODEL.TIMM.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    _C.MODEL.TIMM.DROP_PATH_RATE = 0.2
    # Swin: accept any input size (multiple of 32), the attention masks built per input.
    _C.MODEL.TIMM.DYNAMIC_IMG_SIZE = True
    # A LayerNorm on every output stage, as Swin's detection and segmentation backbones have.
    _C.MODEL.TIMM.OUT_NORM = True

    # RetinaNet's P7: Detectron2 computes it from relu(P6); the reference (mmdetection's FPN with
    # relu_before_extra_convs=False) from P6.
    _C.MODEL.FPN.P7_RELU = True
    # RetinaNet test-time candidates per level: "pairs", Detectron2's top TOPK_CANDIDATES_TEST
    # (anchor, class) pairs above the threshold; "anchors", mmdetection 2.x's (the reference): the top
    # TOPK_CANDIDATES_TEST anchors by their best class score, every class score of theirs above the
    # threshold, boxes clipped to the image before NMS.
    _C.MODEL.RETINANET.CANDIDATE_SELECTION = "pairs"

    # ---------------------------------------------------------------- DenseCLIP
    _C.MODEL.DENSECLIP = CN()
    # Vocabulary of a model built without one (denseclip.modeling.build_denseclip_model's argument);
    # empty = thing_classes (stuff_classes for segmentation) of the metadata of DATASETS.TRAIN[0]
    # (denseclip.modeling.vocabulary_from_config). Only read, never written. The heads' NUM_CLASSES
    # (MODEL.ROI_HEADS / MODEL.RETINANET / MODEL.SEM_SEG_HEAD) of the DenseCLIP configs is 0 = the
    # vocabulary's size. A DenseCLIP config names its image encoder in MODEL.BACKBONE.NAME: a
    # registered Detectron2 backbone emitting CLIP's embeddings (clip_dense, clip_global) besides
    # res2..res5, "build_clip_backbone" (CLIP's own, MODEL.CLIP) or "build_language_guided_backbone"
    # (any backbone with a new attention pool, MODEL.ANY_BACKBONE).
    _C.MODEL.DENSECLIP.CLASS_NAMES = []
    # "learnable" (CoOp context vectors, the reference) or "template" (fixed text prompt).
    _C.MODEL.DENSECLIP.PROMPT = "learnable"
    _C.MODEL.DENSECLIP.N_CONTEXT = 8
    _C.MODEL.DENSECLIP.TEMPLATE = "a photo of a {}."
    # PROMPT "template" only: "" = the one TEMPLATE; "vild" = ViLD's prompt ensemble (20 templates,
    # text/prompt_templates.py): per class, the mean of the normalised embeddings of every template.
    _C.MODEL.DENSECLIP.PROMPT_ENSEMBLE = ""
    # Tokens available for a class name, counting SOT and EOT (5 in the reference = 3 word tokens;
    # the language-guided configs use 69, all that 77 - N_CONTEXT leaves). Longer names are cut, with a
    # warning naming what was kept; two names identical once cut are an error.
    _C.MODEL.DENSECLIP.NAME_CONTEXT_LENGTH = 5
    # Total text length fed to the text transformer ([SOT, ctx, name, EOT]); <= 77. Only the tokens up
    # to a vocabulary's longest prompt are computed, so a longer context costs nothing for short names.
    _C.MODEL.DENSECLIP.TEXT_CONTEXT_LENGTH = 13

    # The CLIP model whose text tower encodes the prompts, independent of the image encoder: "" = the
    # model of MODEL.CLIP (for CLIP image encoders the same model; the IN1k configs set MODEL.CLIP to
    # ViT-B-16 for its text tower, as the reference does for non-CLIP backbones). TEXT_ENCODER_PRETRAINED:
    # its weights, as MODEL.CLIP.PRETRAINED ("" random, an open_clip tag such as "openai", or a local
    # file); read only when TEXT_ENCODER_MODEL is set.
    _C.MODEL.DENSECLIP.TEXT_ENCODER_MODEL = ""
    _C.MODEL.DENSECLIP.TEXT_ENCODER_PRETRAINED = ""

    # How the image's context enters the text (the paper's section 3.3 and its ablation):
    # "post" (the paper's models): the K text embeddings attend to the image tokens [global, dense]
    # through the context decoder (CONTEXT_DECODER), text + gamma * update;
    # "pre": N_CONTEXT learnable queries attend to the image tokens through a decoder of the same
    # size, whose outputs are every prompt's context tokens: the text tower runs per image (B x K);
    # "none": the learnable context only. CONTEXT_DECODER.ENABLED False is the older spelling of "none".
    _C.MODEL.DENSECLIP.PROMPTING = "post"
    _C.MODEL.DENSECLIP.CONTEXT_DECODER = CN()
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.ENABLED = True
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH = 256
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.HEADS = 4
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.LAYERS = 3
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.DROPOUT = 0.1
    _C.MODEL.DENSECLIP.CONTEXT_DECODER.GAMMA_INIT = 1e-4

    # Fixed temperature of the pixel-text score maps.
    _C.MODEL.DENSECLIP.TAU = 0.07
    # Bottom-up feature the score maps are concatenated to.
    _C.MODEL.DENSECLIP.SCORE_MAP_FEATURE = "res5"
    # Concatenate the raw cosine similarities (the reference's segmentation models) instead of
    # cosine / TAU (its detectors) to SCORE_MAP_FEATURE; the auxiliary loss reads cosine / TAU either way.
    _C.MODEL.DENSECLIP.FUSE_RAW_SCORES = False
    # Weight of the auxiliary pixel-text loss; 0 disables it.
    _C.MODEL.DENSECLIP.PIXEL_TEXT_LOSS_WEIGHT = 1.0
    # Inference outputs also hold "score_maps": K x H x W pixel-text probabilities at the output
    # size (the model's ``return_score_maps``, which the predictor turns on when asked).
    _C.MODEL.DENSECLIP.RETURN_SCORE_MAPS = False

    # "language": classifiers whose weights are the text embeddings (open vocabulary);
    # "stock": Detectron2's heads, as in the reference implementation.
    _C.MODEL.DENSECLIP.HEAD = "language"
    # Initial logit scale (1/temperature) of the language-guided classifiers, and whether it learns.
    # RetinaNet starts lower: its sigmoid logits must begin near the focal-loss prior (measured: the
    # initial focal loss is 2.7 with 5 and 17.5 with 20 on the synthetic shapes).
    _C.MODEL.DENSECLIP.CLASSIFIER_LOGIT_SCALE = 20.0
    _C.MODEL.DENSECLIP.RETINANET_LOGIT_SCALE = 5.0
    _C.MODEL.DENSECLIP.LEARN_LOGIT_SCALE = True
    # Dimension of the per-anchor embeddings of the language-guided RetinaNet head.
    _C.MODEL.DENSECLIP.RETINANET_CLS_EMBED_DIM = 64

    # ---------------------------------------------------------------- semantic segmentation
    # The Semantic FPN head (Kirillov et al.; mmseg's FPNHead): Dropout2d before the classifier, and
    # how its cross-entropy is averaged: "valid_pixels" (Detectron2) or "all_pixels" (mmseg 0.19,
    # the reference: ignored pixels count in the denominator with a loss of 0).
    _C.MODEL.SEM_SEG_HEAD.DROPOUT = 0.0
    _C.MODEL.SEM_SEG_HEAD.LOSS_AVERAGE = "valid_pixels"
    _C.TEST.SEM_SEG = CN()
    # "whole" (one forward per image) or "slide" (windows of CROP_SIZE every STRIDE pixels, clipped at
    # the border, never padded; overlapping logits averaged), the reference's test mode.
    _C.TEST.SEM_SEG.MODE = "whole"
    _C.TEST.SEM_SEG.CROP_SIZE = (512, 512)
    _C.TEST.SEM_SEG.STRIDE = (341, 341)
    # Multi-scale / flip testing: the input is resized by each ratio (and flipped), the class
    # probabilities averaged (the reference's MS: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 + flip).
    _C.TEST.SEM_SEG.SCALES = [1.0]
    _C.TEST.SEM_SEG.FLIP = False

    # ---------------------------------------------------------------- solver (reference recipe)
    _C.SOLVER.OPTIMIZER = "AdamW"
    _C.SOLVER.BETAS = (0.9, 0.999)
    # Learning-rate multipliers of the CLIP image encoder and of the text encoder (0 = frozen).
    _C.SOLVER.BACKBONE_MULTIPLIER = 0.1
    _C.SOLVER.TEXT_ENCODER_MULTIPLIER = 0.0
    # Gradient clipping: Detectron2's SOLVER.CLIP_GRADIENTS, with one more CLIP_TYPE, "full_model"
    # (as in Detic and Mask2Former): the norm of all gradients together is clipped to CLIP_VALUE.
    # The base configs set the reference's recipe (ENABLED True, "full_model", 0.1).
    # Steps expressed as fractions of MAX_ITER (8/12 and 11/12 for the 1x schedule), what the configs
    # of this project use. build_config writes them into SOLVER.STEPS; SOLVER.STEPS set after them
    # (in the config file over its _BASE_, or as an override) replace them; both in one place is an error.
    _C.SOLVER.STEP_FRACTIONS = []
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR" (the segmentation recipe, mmcv's poly policy): every
    # group's lr = (its initial lr - POLY_LR_MIN) * (1 - iter / MAX_ITER) ** POLY_LR_POWER + POLY_LR_MIN,
    # times Detectron2's warm-up factor (SOLVER.WARMUP_*) during the first WARMUP_ITERS iterations.
    _C.SOLVER.POLY_LR_POWER = 0.9
    _C.SOLVER.POLY_LR_MIN = 0.0
    # Parameters exempt from weight decay beyond Detectron2's norm/bias rules: "embeddings" (positional
    # embeddings, learnable context, gammas, logit scales: the detectors' recipe) or "reference" (mmcv's
    # custom_keys of the segmentation recipe, matched longest key first: only the context decoder's
    # LayerNorms norm1-3; with SOLVER.WEIGHT_DECAY_NORM = SOLVER.WEIGHT_DECAY every other norm is decayed).
    _C.SOLVER.WEIGHT_DECAY_EXEMPTIONS = "embeddings"
    # Iterations between metric writes (console, metrics.json, TensorBoard); Detectron2 uses 20.
    _C.SOLVER.LOG_PERIOD = 20
    # Autocast dtype of SOLVER.AMP.ENABLED: "float16" (CUDA, with a gradient scaler) or "bfloat16"
    # (CUDA or CPU, float32's range: no scaler).
    _C.SOLVER.AMP.PRECISION = "float16"

    # ---------------------------------------------------------------- data
    _C.DATASETS.SYNTHETIC = CN()
    # Where the generated quickstart dataset lives (created on first use).
    _C.DATASETS.SYNTHETIC.ROOT = "datasets/synthetic_shapes"
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 240
    _C.DATASETS.SYNTHETIC.NUM_VAL = 60
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = 256
    _C.DATASETS.SYNTHETIC.SEED = 0
    # Extra datasets to register: COCO-format as "name=path/to/instances.json:path/to/images", semantic
    # segmentation folders as "name=sem_seg:path/to/images:path/to/labels:path/to/classes.txt".
    _C.DATASETS.REGISTER = []
    # Semantic segmentation training pipeline (data/sem_seg_mapper.py; the reference's mmseg recipe):
    # the (MAX_SIZE_TRAIN, MIN_SIZE_TRAIN[0]) scale is multiplied by a ratio drawn from this range.
    _C.INPUT.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # Largest share of the crop's labelled pixels one class may cover (10 tries; 1.0 = any crop),
    # Detectron2's key (DeepLab project) for RandomCrop_CategoryAreaConstraint.
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # mmseg's PhotoMetricDistortion, as Detectron2's projects name it (ColorAugSSDTransform).
    _C.INPUT.COLOR_AUG_SSD = False

    # ---------------------------------------------------------------- runtime
    # Re-initialise vocabulary-dependent tensors when MODEL.WEIGHTS was trained with another number
    # of classes, instead of failing.
    _C.MODEL.REINIT_VOCABULARY_MISMATCH = False
