"""Text side of DenseCLIP: class-name prompts through CLIP's frozen text tower, and the context
decoder that adapts the resulting text embeddings to each image."""
from .clip_text_tower import CLIPTextTower
from .context_decoder import ContextDecoder
from .prompt_encoder import PromptTextEncoder, PromptTokens, validate_vocabulary

__all__ = ["ContextDecoder", "CLIPTextTower", "PromptTextEncoder", "PromptTokens", "validate_vocabulary"]
