"""The recommender's frozen-bottom cache in each mode (``train.lower_cache``)."""

from __future__ import annotations

import pytest
import torch

from attribution_analysis.config import ConfigError, RecommenderConfig, from_dict
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.models import lower_cache as lc
from attribution_analysis.models.click_scorer import batch_logits
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import data_config, make_corpus, tiny_config, tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lc")
    tok = tiny_tokenizer()
    data = load_mind_data(data_config(make_corpus(root / "corpus"), root / "cache"), tok)
    torch.manual_seed(0)
    model = build_nrms(tiny_config(fine_tune_layers=1), len(tok)).eval()
    return data, model, root


def test_half_precision_and_disk_caches_match_float32(setup) -> None:
    data, model, root = setup
    full = lc.build_lower_cache(model, data.table, 64, "float32")
    assert full.dtype == torch.float32 and full.shape[0] == len(data.table)
    half = lc.build_lower_cache(model, data.table, 64, "float16")
    disk = lc.build_lower_cache(model, data.table, 64, "disk", root / "lower.npy")
    assert half.dtype == disk.dtype == torch.float16
    assert torch.equal(half, disk)  # the same rounding, memory-mapped from the file
    assert (root / "lower.npy").is_file() and not list(root.glob("*.tmp"))
    torch.testing.assert_close(half.float(), full, atol=2e-3, rtol=1e-3)
    assert lc.build_lower_cache(model, data.table, 64, "off") is None


def test_scores_from_each_cache_agree_with_no_cache(setup) -> None:
    data, model, root = setup
    rows = torch.arange(1, 11)
    batch = {"candidates": rows.view(2, 5), "history": rows.flip(0).view(2, 5),
             "history_mask": torch.ones(2, 5, dtype=torch.bool)}  # fmt: skip
    with torch.no_grad():
        exact = batch_logits(model, batch, data.table, None)
        for mode, atol in (("float32", 1e-5), ("float16", 1e-2), ("bfloat16", 5e-2)):
            cache = lc.build_lower_cache(model, data.table, 64, mode)
            torch.testing.assert_close(
                batch_logits(model, batch, data.table, cache), exact, atol=atol, rtol=0
            )


def test_auto_picks_float32_for_small_caches_and_float16_above_the_limit(setup, monkeypatch):
    data, model, _ = setup
    assert lc.resolve_mode("auto", model, data.table) == "float32"
    monkeypatch.setattr(lc, "AUTO_FLOAT32_BYTES", 10)
    assert lc.resolve_mode("auto", model, data.table) == "float16"
    with pytest.raises(ValueError, match="lower_cache must be one of"):
        lc.resolve_mode("fp8", model, data.table)


def test_config_rejects_an_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="'train.lower_cache' must be one of"):
        from_dict(RecommenderConfig, {"train": {"lower_cache": "fp8"}})
