"""Items -> semantic IDs (SIDs): residual quantisers (RQ-KMeans, RQ-VAE) behind ``SemanticIdTokenizer``."""
from genrecedit.tokenizer.config import TokenizerConfig
from genrecedit.tokenizer.quantizer import ResidualQuantizer
from genrecedit.tokenizer.rqkmeans import ResidualKMeans
from genrecedit.tokenizer.rqvae import RQVAE, RQVAEQuantizer
from genrecedit.tokenizer.sids import SemanticIdTokenizer

__all__ = ["RQVAE", "RQVAEQuantizer", "ResidualKMeans", "ResidualQuantizer", "SemanticIdTokenizer", "TokenizerConfig"]
