"""DenseCLIP for Detectron2. Importing the package registers its backbones, meta-architectures
and datasets with Detectron2's registries."""
import warnings

with warnings.catch_warnings():
    # fvcore.nn and detectron2.modeling call torch.jit.script when imported, and torch >= 2.10
    # deprecates it with a FutureWarning that every command printed (--help included). Silenced for
    # these imports only: a torch.jit.script call of anyone else still warns.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is (deprecated|not supported)", category=FutureWarning)
    import detectron2.modeling  # noqa: F401
    import fvcore.nn  # noqa: F401

from . import backbone, data, modeling  # noqa: E402, F401  (registers backbones, meta-architectures, ROI heads, datasets)
from .config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, add_denseclip_config  # noqa: E402

__version__ = "0.1.0"
