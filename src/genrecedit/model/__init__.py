"""Model stage: the TIGER backbone (HF T5), its token layout, trie-constrained decoding and training."""
