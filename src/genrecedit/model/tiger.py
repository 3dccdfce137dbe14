"""The TIGER backbone: an HF T5 (gated-SiLU FFN) over position-specific SID tokens, and its checkpoint format.

The decoder stack may have its own FFN width (``decoder_d_ff``): the decoder FFN is where GenRecEdit writes new
items, so its width is edit capacity (docs/method.md §3.1), while the encoder sees 20x more tokens and dominates cost.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Stack

from genrecedit.errors import ArtifactMismatchError, ConfigError
from genrecedit.model.tokens import EOS, PAD, TokenLayout

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


@dataclass
class TigerConfig:
    """Backbone size. Defaults fit 2 CPU cores; ``full_size()`` is the official TIGER/GenRecEdit config."""

    d_model: int = 64
    num_heads: int = 4
    d_kv: int = 16
    encoder_layers: int = 2
    decoder_layers: int = 4
    d_ff: int = 256
    decoder_d_ff: int | None = 1024  # None: same as d_ff
    dropout: float = 0.1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    @staticmethod
    def full_size() -> "TigerConfig":
        return TigerConfig(d_model=128, num_heads=8, d_kv=16, encoder_layers=6, decoder_layers=6, d_ff=1024,
                           decoder_d_ff=1024)

    def validate(self) -> None:
        if self.d_model <= 0 or self.num_heads <= 0 or self.encoder_layers <= 0 or self.decoder_layers <= 0:
            raise ConfigError(f"model sizes must be positive: {self}")


def _t5_config(cfg: TigerConfig, layout: TokenLayout) -> T5Config:
    t5 = T5Config(
        vocab_size=layout.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.encoder_layers,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        dropout_rate=cfg.dropout,
        feed_forward_proj="gated-silu",
        tie_word_embeddings=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    # T5Config turns the tie_word_embeddings kwarg into "no output scaling" but still ties the head by default;
    # an untied head is what we ask for (and what the checkpoint format stores).
    t5.tie_word_embeddings = False
    return t5


def build_tiger(cfg: TigerConfig, layout: TokenLayout, seed: int = 0) -> T5ForConditionalGeneration:
    """A freshly initialised backbone; the decoder stack is rebuilt when ``decoder_d_ff`` differs from ``d_ff``."""
    cfg.validate()
    torch.manual_seed(seed)
    t5_cfg = _t5_config(cfg, layout)
    model = T5ForConditionalGeneration(t5_cfg)
    if cfg.decoder_d_ff is not None and cfg.decoder_d_ff != cfg.d_ff:
        dec_cfg = copy.deepcopy(model.decoder.config)
        dec_cfg.d_ff = cfg.decoder_d_ff
        model.decoder = T5Stack(dec_cfg)
    # one token embedding for encoder and decoder (untying the head must not untie these)
    model.set_input_embeddings(model.shared)
    return model


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter/buffer (name, dtype, shape, bytes), in name order: identifies a base model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class ModelMeta:
    """What a checkpoint directory says about itself."""

    config: dict
    sizes: list[int]
    weights_hash: str
    tokenizer_hash: str
    extra: dict


def _state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # The decoder and encoder share `shared`; safetensors refuses aliased tensors, so store each once.
    state = model.state_dict()
    return {k: v.contiguous() for k, v in state.items() if not k.endswith("embed_tokens.weight")}


def save_model(model: T5ForConditionalGeneration, cfg: TigerConfig, layout: TokenLayout, out_dir: Path,
               tokenizer_hash: str, extra: dict | None = None) -> ModelMeta:
    """Write ``model.safetensors`` + ``model.json`` atomically (temp files, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = ModelMeta(asdict(cfg), list(layout.sizes), weights_hash(model), tokenizer_hash, extra or {})
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False) as tmp:
        tmp_weights = tmp.name
    save_file(_state_for_saving(model), tmp_weights)
    os.replace(tmp_weights, out_dir / WEIGHTS_FILE)
    tmp_meta = out_dir / (META_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(asdict(meta), indent=2))
    os.replace(tmp_meta, out_dir / META_FILE)
    return meta


def load_model(model_dir: Path, device: str = "cpu",
               expected_tokenizer_hash: str | None = None) -> tuple[T5ForConditionalGeneration, TigerConfig,
                                                                      TokenLayout, ModelMeta]:
    """Load a checkpoint written by ``save_model``; refuses a tokenizer it was not trained with."""
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.exists():
        raise ArtifactMismatchError(f"{model_dir} is not a model directory (no {META_FILE})")
    meta = ModelMeta(**json.loads(meta_path.read_text()))
    if expected_tokenizer_hash is not None and meta.tokenizer_hash != expected_tokenizer_hash:
        raise ArtifactMismatchError(
            f"{model_dir}: model was trained with tokenizer {meta.tokenizer_hash[:12]}, "
            f"not {expected_tokenizer_hash[:12]}"
        )
    cfg = TigerConfig(**meta.config)
    layout = TokenLayout(tuple(meta.sizes))
    model = build_tiger(cfg, layout)
    state = load_file(str(model_dir / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("embed_tokens.weight")]
    if missing or unexpected:
        raise ArtifactMismatchError(f"{model_dir}: weights do not match the config (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]})")
    model.to(device).eval()
    if weights_hash(model) != meta.weights_hash:
        raise ArtifactMismatchError(f"{model_dir}: weights hash differs from {META_FILE} (file corrupted?)")
    return model, cfg, layout, meta
