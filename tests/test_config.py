"""Tests of the typed YAML configuration."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from attribution_analysis.config import (
    AttributionConfig,
    ConfigError,
    DataConfig,
    DiffMaskConfig,
    ModelComparisonConfig,
    ModelConfig,
    RecommenderConfig,
    TrainConfig,
    from_dict,
    load_config,
    load_yaml,
    resolve_path,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_defaults_and_round_trip() -> None:
    config = from_dict(RecommenderConfig, {})
    assert config == RecommenderConfig()
    assert from_dict(RecommenderConfig, to_dict(config)) == config
    assert from_dict(RecommenderConfig, None) == config
    attribution = AttributionConfig()
    assert from_dict(AttributionConfig, to_dict(attribution)) == attribution


def test_nested_values_are_applied() -> None:
    config = from_dict(
        RecommenderConfig,
        {
            "data": {"max_history": 7, "extra_news_dirs": ["a", "b"], "rationales": None},
            "model": {"encoder": "tiny-random-bert", "dropout": 0},
            "train": {"lr": 1, "max_steps_per_epoch": 3, "run_name": None},
        },
    )
    assert config.data.max_history == 7 and config.data.extra_news_dirs == ["a", "b"]
    assert config.data.rationales is None
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.max_steps_per_epoch == 3
    assert config.train.epochs == TrainConfig().epochs


def test_unknown_top_level_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(RecommenderConfig, {"data": {}, "modle": {}})
    message = str(exc.value)
    assert "'modle'" in message and "top level" in message
    assert "valid keys: data, model, train" in message


@pytest.mark.parametrize(
    ("section", "cls"), [("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)]
)
def test_unknown_nested_key_lists_section_keys(section: str, cls) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(RecommenderConfig, {section: {"bogus_key": 1}})
    message = str(exc.value)
    assert f"'{section}.bogus_key'" in message
    assert "valid keys: " + ", ".join(field_names(cls)) in message


def test_unknown_key_two_levels_deep() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(AttributionConfig, {"diffmask": {"temprature": 0.5}})
    message = str(exc.value)
    assert "'diffmask.temprature'" in message
    assert ", ".join(field_names(DiffMaskConfig)) in message


def test_several_unknown_keys_all_named() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, {"zeta": 1, "alpha": 2, "epochs": 1})
    assert "'alpha', 'zeta'" in str(exc.value)


def test_non_string_key_rejected_with_config_error() -> None:
    with pytest.raises(ConfigError):
        from_dict(RecommenderConfig, {1: "x"})


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"train": {"epochs": "3"}}, "train.epochs"),
        ({"train": {"epochs": 2.5}}, "train.epochs"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": False}}, "train.lr"),
        ({"train": {"max_steps_per_epoch": "x"}}, "train.max_steps_per_epoch"),
        ({"data": {"strict": "yes"}}, "data.strict"),
        ({"data": {"strict": 1}}, "data.strict"),
        ({"data": {"train_dir": 5}}, "data.train_dir"),
        ({"data": {"extra_news_dirs": "dir"}}, "data.extra_news_dirs"),
        ({"data": {"extra_news_dirs": ["ok", 3]}}, "data.extra_news_dirs[1]"),
        ({"model": {"encoder": None}}, "model.encoder"),
        ({"model": 3}, "model"),
        ({"model": None}, "model"),
    ],
)
def test_wrong_types_rejected(data: dict, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(RecommenderConfig, data)
    assert f"'{name}'" in str(exc.value)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: two\n")
    with pytest.raises(ConfigError) as exc:
        load_config(RecommenderConfig, path)
    assert str(exc.value).startswith(str(path))
    assert "'train.epochs'" in str(exc.value)
    path.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(RecommenderConfig, path)
    assert str(path) in str(exc.value) and "valid keys" in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(RecommenderConfig, path)
    assert str(path) in str(exc.value) and "not found" in str(exc.value)


@pytest.mark.parametrize("text", ["train: [1, 2\n", "a: b: c\n", "train:\n\tepochs: 1\n"])
def test_bad_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(RecommenderConfig, path)
    assert str(path) in str(exc.value) and "YAML" in str(exc.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    assert str(path) in str(exc.value) and "mapping" in str(exc.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="empty"):  # never a silent run of every default
        load_config(RecommenderConfig, empty)


def test_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "model:\n  encoder: tiny-random-bert\n  num_heads: 2\ntrain:\n  lr: 0.003\n  seed: 4\n"
    )
    config = load_config(RecommenderConfig, path)
    assert config.model.num_heads == 2 and config.train.lr == 0.003 and config.train.seed == 4


def test_relative_paths_resolve_against_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/x") == tmp_path.resolve() / "data" / "x"
    assert resolve_path("/abs/y") == Path("/abs/y")
    assert resolve_path("~/z") == Path(os.path.expanduser("~/z")).resolve()


SHIPPED = sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "configs").rglob("*.yml"))


@pytest.mark.skipif(not SHIPPED, reason="no shipped configs under configs/")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_load(path: Path) -> None:
    cls = AttributionConfig if "attribution" in path.parts else RecommenderConfig
    cls = ModelComparisonConfig if "compare" in path.parts else cls
    config = load_config(cls, path)
    assert isinstance(config, cls)
    if isinstance(config, AttributionConfig):
        assert (REPO / config.model_config).is_file(), config.model_config


def test_flat_diffmask_key_names_its_new_section() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(AttributionConfig, {"diffmask": {"lr_probe": 0.01}})
    assert "'diffmask.lr_probe' is now 'diffmask.training.lr_probe'" in str(exc.value)


def test_diffmask_sections_are_the_constructor_and_training_defaults() -> None:
    """One source of truth: the keyword defaults of DIFFMASK and train_diffmask are the
    config sections' defaults."""
    import inspect

    from attribution_analysis.methods.diffmask import DIFFMASK
    from attribution_analysis.methods.diffmask.train_diffmask import training_settings

    params = inspect.signature(DIFFMASK.__init__).parameters
    kwargs = DiffMaskConfig().constructor_kwargs()
    assert kwargs, "sections hold the constructor settings"
    for key, value in kwargs.items():
        assert params[key].default == value, key
    assert training_settings() == DiffMaskConfig().training
    assert training_settings(n_epochs=3).n_epochs == 3
    with pytest.raises(TypeError, match="valid: n_epochs"):
        training_settings(n_epoch=3)


def test_shipped_config_writes_every_default() -> None:
    from attribution_analysis.config import load_config

    config = load_config(AttributionConfig, "configs/attribution/nrms_bert_finetune.yaml")
    assert config.diffmask == DiffMaskConfig()


def test_diffmask_set_finds_the_section() -> None:
    config = DiffMaskConfig()
    config.set("lr_probe", 0.5)
    config.set("probe_type", "simple")
    assert config.training.lr_probe == 0.5 and config.probe.probe_type == "simple"
    with pytest.raises(ConfigError, match="no DIFFMASK setting"):
        config.set("bogus", 1)


def test_train_diffmask_refuses_a_positional_epoch_count() -> None:
    from attribution_analysis.methods.diffmask.train_diffmask import training_settings

    with pytest.raises(TypeError, match="by keyword"):
        training_settings(10)


@pytest.mark.parametrize(
    ("cls", "data", "key"),
    [
        (AttributionConfig, {"n_samples": 0}, "'n_samples'"),
        (AttributionConfig, {"n_samples": -5}, "'n_samples'"),
        (AttributionConfig, {"top_k": 0}, "'top_k'"),
        (AttributionConfig, {"diffmask": {"training": {"n_epochs": 0}}}, "training.n_epochs'"),
        (
            AttributionConfig,
            {"diffmask": {"objective": {"constraint_margin": float("nan")}}},
            "'diffmask.objective.constraint_margin'",
        ),
        (AttributionConfig, {"diffmask": {"training": {"convergence": {"window": 0}}}}, "window"),
        (RecommenderConfig, {"data": {"npratio": 0}}, "'data.npratio'"),
        (RecommenderConfig, {"data": {"max_history": -1}}, "'data.max_history'"),
        (RecommenderConfig, {"train": {"max_steps_per_epoch": 0}}, "max_steps_per_epoch"),
        (RecommenderConfig, {"train": {"epochs": -1}}, "'train.epochs'"),
    ],
)
def test_bad_values_in_yaml_are_rejected_with_the_key(cls, data, key) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(cls, data)
    assert key in str(exc.value)


def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run() -> None:
    import torch

    from attribution_analysis.utils.devices import check_device

    assert check_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")


def test_json_outputs_write_nan_as_null(tmp_path: Path) -> None:
    import json
    import math

    from attribution_analysis.utils.io import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"auc": math.nan, "x": [1.0, math.inf]})
    assert json.loads(path.read_text()) == {"auc": None, "x": [1.0, None]}


def test_model_comparison_statistic_is_checked() -> None:
    assert from_dict(ModelComparisonConfig, {}).diffmask_statistic == "kept_log_odds"
    cfg = from_dict(ModelComparisonConfig, {"diffmask_statistic": "keep_probability"})
    assert cfg.diffmask_statistic == "keep_probability"
    with pytest.raises(ConfigError, match="diffmask_statistic"):
        from_dict(ModelComparisonConfig, {"diffmask_statistic": "keep"})


def test_model_comparison_training_data_keys_are_checked() -> None:
    cfg = from_dict(ModelComparisonConfig, {})
    assert cfg.diffmask_train_data == "candidates" and cfg.group_train_share == 0.2
    assert from_dict(ModelComparisonConfig, {"group_train_share": 0}).group_train_share == 0
    for key, bad in (("diffmask_train_data", "mine"), ("group_train_share", 1.0),
                     ("group_train_share", -0.1)):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            from_dict(ModelComparisonConfig, {key: bad})


def test_model_comparison_min_diff_is_checked() -> None:
    assert from_dict(ModelComparisonConfig, {}).min_diff == 0.0
    assert from_dict(ModelComparisonConfig, {"min_diff": 1.0}).min_diff == 1.0
    with pytest.raises(ConfigError, match="min_diff"):
        from_dict(ModelComparisonConfig, {"min_diff": -0.5})


def test_probe_context_is_a_probe_setting() -> None:
    cfg = from_dict(DiffMaskConfig, {"probe": {"probe_context": "user"}})
    assert cfg.constructor_kwargs()["probe_context"] == "user"
    assert from_dict(DiffMaskConfig, {}).probe.probe_context == "auto"
