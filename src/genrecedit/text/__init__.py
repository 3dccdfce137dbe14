"""Item text -> embeddings (encoders and the on-disk embedding cache)."""
from genrecedit.text.embed import (
    EmbeddingCache,
    HashingEncoder,
    MiniLMEncoder,
    TextEncoder,
    embed_items,
    make_encoder,
)

__all__ = ["EmbeddingCache", "HashingEncoder", "MiniLMEncoder", "TextEncoder", "embed_items", "make_encoder"]
