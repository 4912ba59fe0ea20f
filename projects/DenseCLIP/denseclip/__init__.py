"""DenseCLIP for Detectron2. Importing the package registers its backbones, meta-architectures
and datasets with Detectron2's registries."""
from . import backbone, data, modeling  # noqa: F401  (registers backbones, meta-architectures, ROI heads, datasets)
from .config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, add_denseclip_config

__version__ = "0.1.0"
