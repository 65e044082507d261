"""Save and load trained recommenders, ``save_pretrained``/``from_pretrained`` style.

A recommender folder holds ``model.safetensors`` (all weights) and ``config.json`` (the model
config, the vocabulary size, the tokenizer fingerprint and a fingerprint of the weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from attribution_analysis.config import (
    TINY_RANDOM,
    AttributionConfig,
    ConfigError,
    ModelConfig,
    RecommenderConfig,
    from_dict,
    load_config,
    resolve_path,
    to_dict,
)
from attribution_analysis.models.nrms import NRMS, NewsEncoder, UserEncoder
from attribution_analysis.models.pretrained import load_language_model
from attribution_analysis.utils.io import atomic_write, atomic_write_json

FORMAT = "nrms-plm/1"
ARCHITECTURE_KEYS = ("encoder", "tokenizer", "num_heads", "head_dim", "query_dim")
TINY_KEYS = ("tiny_hidden_size", "tiny_num_layers", "tiny_num_heads", "tiny_intermediate_size")


def build_nrms(config: ModelConfig, vocab_size: int) -> NRMS:
    """A fresh NRMS whose news encoder starts from the configured pretrained weights."""
    plm = load_language_model(config, vocab_size)
    news = NewsEncoder(
        plm,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        query_dim=config.query_dim,
        dropout=config.dropout,
        fine_tune_layers=config.fine_tune_layers,
    )
    user = UserEncoder(news.dim, config.num_heads, config.query_dim, config.dropout)
    return NRMS(news, user)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over parameter names, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_recommender(
    model: NRMS,
    out_dir: str | Path,
    config: ModelConfig,
    vocab_size: int,
    extra: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / "model.safetensors", lambda p: save_file(state, str(p)))
    meta = {
        "format": FORMAT,
        "model": to_dict(config),
        "vocab_size": vocab_size,
        "fingerprint": model_fingerprint(model),
        **(extra or {}),
    }
    atomic_write_json(out_dir / "config.json", meta)
    return out_dir


def read_recommender_meta(path: str | Path) -> dict:
    """``config.json`` of a recommender folder, with clear errors."""
    path = Path(path)
    meta_path = path / "config.json"
    if not (path / "model.safetensors").is_file() or not meta_path.is_file():
        raise ConfigError(f"{path}: not a recommender folder (model.safetensors + config.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return meta


def load_recommender(path: str | Path, model_config: ModelConfig | None = None) -> NRMS:
    """Load a saved recommender in eval mode.

    If ``model_config`` is given, it must describe the same architecture as the saved one.
    """
    meta = read_recommender_meta(path)
    saved = from_dict(ModelConfig, meta["model"])
    if model_config is not None:
        diff = [k for k in ARCHITECTURE_KEYS if getattr(saved, k) != getattr(model_config, k)]
        if saved.encoder == TINY_RANDOM:
            diff += [k for k in TINY_KEYS if getattr(saved, k) != getattr(model_config, k)]
        if diff:
            raise ConfigError(
                f"{path}: checkpoint was made for another model config (differs in {diff})"
            )
    model = build_nrms(saved, int(meta["vocab_size"]))
    weights = Path(path) / "model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises SafetensorError on a truncated file
        raise ConfigError(
            f"{weights}: not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: weights do not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()


def load_model(
    config: AttributionConfig | str | Path,
    model_config: ModelConfig | RecommenderConfig | None = None,
) -> NRMS:
    """A ready recommender in eval mode.

    ``config`` is an :class:`AttributionConfig` (its ``checkpoint`` is loaded) or a folder path.
    ``model_config`` (or, if omitted, the file named by ``config.model_config``) is checked
    against the checkpoint.
    """
    path = config.checkpoint if isinstance(config, AttributionConfig) else config
    if isinstance(model_config, RecommenderConfig):
        model_config = model_config.model
    if model_config is None and isinstance(config, AttributionConfig):
        model_config = load_config(RecommenderConfig, resolve_path(config.model_config)).model
    return load_recommender(resolve_path(path), model_config)
