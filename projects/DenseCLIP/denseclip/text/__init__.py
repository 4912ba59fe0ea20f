"""Text side of DenseCLIP: class-name prompts through CLIP's frozen text tower, and the context
decoder that adapts the resulting text embeddings to each image."""
from .context_decoder import ContextDecoder
from .prompt_encoder import CLIPTextTower, PromptTextEncoder, PromptTokens, validate_vocabulary

__all__ = ["ContextDecoder", "CLIPTextTower", "PromptTextEncoder", "PromptTokens", "validate_vocabulary"]
