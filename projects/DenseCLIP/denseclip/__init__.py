"""DenseCLIP for Detectron2. Importing the package registers its backbones, meta-architectures
and datasets with Detectron2's registries."""
from .config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, add_denseclip_config
from . import backbone, data, modeling  # noqa: F401  (registers backbones, meta-architectures, ROI heads, datasets)

__version__ = "0.1.0"
