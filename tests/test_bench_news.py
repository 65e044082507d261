"""The news benchmark's smoke mode end to end: the JSON report has the expected keys and finite
numbers, and two runs of the same seed give a seed-to-seed sd of exactly 0; and the subset of a
method evaluation it splits by predicted decision."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from attribution_analysis.evaluation.compare import MethodEvaluation, subset_evaluation
from tests.helpers_foundation import copy_tiny_configs, load_benchmark


def _load_bench():
    return load_benchmark("bench_news")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The smoke run with seed 0 twice, in a folder holding copies of the tiny configs."""
    root = tmp_path_factory.mktemp("bench_news")
    copy_tiny_configs(root)
    bench = _load_bench()
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench.main(["--smoke", "--seeds", "0,0", "--out", "bench", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    assert (root / "bench/bench_news.md").read_text().startswith("# News benchmark")
    return json.loads((root / "bench/bench_news.json").read_text()), bench


SIGN_RANKS = ("supporting_rank", "opposing_rank")


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.slow
def test_report_keys_and_finite_numbers(report):
    data, bench = report
    assert set(data) >= {"settings", "environment", "per_seed", "summary", "targets"}
    assert data["settings"]["n_samples"] == 16 and data["settings"]["seeds"] == [0, 0]
    assert data["settings"]["effect_head_titles"] == "train split"
    assert [s["seed"] for s in data["per_seed"]] == [0, 0]
    assert data["phases_seconds"]["total"] > 0
    dm = data["summary"]["diffmask"]
    assert set(dm) == set(bench.SUBSETS)
    assert dm["all"]["n_samples"] == 16
    assert dm["predicted_click"]["n_samples"] + dm["predicted_non_click"]["n_samples"] == 16
    for key in bench.DIFFMASK_METRICS:
        assert _finite(dm["all"][key]["mean"]), key
    methods = data["summary"]["methods"]
    assert set(methods) == set(bench.REMOVALS)
    for removal in bench.REMOVALS:
        assert set(methods[removal]) == set(bench.SUBSETS)
        block = methods[removal]["all"]
        assert list(block) == ["diffmask", "diffmask_effect", "diffmask_loo", "ig", "random"]
        for name, cell in block.items():
            assert cell["n_examples"] == 16
            for metric in bench.METHOD_METRICS:
                if metric in SIGN_RANKS and cell[metric]["mean"] is None:
                    continue  # the tiny random model may move no token's effect beyond 0.01
                assert _finite(cell[metric]["mean"]), (removal, name, metric)
    names = [t["target"] for t in data["targets"]]
    assert len(names) == 11 and all(t["met"] in (True, False, None) for t in data["targets"])
    assert names[-4:] == [
        "DIFFMASK's set, effect-head order, sufficiency AOPC (removal baseline, all) <= IG's",
        "DIFFMASK's set, effect-head order, deletion AUC (removal baseline, all) <= IG's",
        "DIFFMASK's set, leave-one-out order, sufficiency AOPC (removal baseline, all) <= IG's",
        "DIFFMASK's set, leave-one-out order, deletion AUC (removal baseline, all) <= IG's",
    ]


@pytest.mark.slow
def test_same_seed_twice_gives_zero_sd(report):
    data, bench = report
    dm = data["summary"]["diffmask"]["all"]
    for key in bench.DIFFMASK_METRICS:
        assert dm[key]["sd"] == 0.0, key
    for removal in bench.REMOVALS:
        for name, cell in data["summary"]["methods"][removal]["all"].items():
            for metric in bench.METHOD_METRICS:
                if metric in SIGN_RANKS and cell[metric]["mean"] is None:
                    continue
                assert cell[metric]["sd"] == 0.0, (removal, name, metric)


def test_subset_evaluation_keeps_gold_metrics_aligned():
    ev = MethodEvaluation("m")
    for decision, has_gold, value in [
        (1, True, 0.1),
        (-1, False, 0.2),
        (1, False, 0.3),
        (1, True, 0.4),
    ]:
        ev.add("gini", value)
        ev.add("decision", decision)
        ev.add("has_gold", has_gold)
        if has_gold:
            ev.add("auprc", value)
        ev.deletion.append(np.full(11, value))
        ev.insertion.append(np.full(11, -value))
    clicks = subset_evaluation(ev, [d > 0 for d in ev.values["decision"]])
    assert clicks.values["gini"] == [0.1, 0.3, 0.4]
    assert clicks.values["auprc"] == [0.1, 0.4]
    assert [c[0] for c in clicks.deletion] == [0.1, 0.3, 0.4]
    others = subset_evaluation(ev, [d < 0 for d in ev.values["decision"]])
    assert others.values["gini"] == [0.2] and others.values["auprc"] == []
    assert [c[0] for c in others.insertion] == [-0.2]
    with pytest.raises(ValueError, match="flags"):
        subset_evaluation(ev, [True])


def test_targets_without_ig_are_not_applicable_instead_of_a_crash():
    """``--methods diffmask`` (no IG): the two comparisons with IG read "n/a" and the report
    is still written (this used to end in a TypeError after the whole run)."""
    bench = _load_bench()
    cell = {"mean": 0.5, "sd": 0.01}
    summary = {
        "diffmask": {s: {k: cell for k in bench.DIFFMASK_METRICS} for s in bench.SUBSETS},
        "methods": {
            "baseline": {"all": {"diffmask": {m: cell for m in bench.METHOD_METRICS}}},
        },
    }
    rows = bench.targets(summary)
    assert len(rows) == 7
    assert [r["met"] for r in rows[-2:]] == [None, None]
    assert all(r["met"] is not None for r in rows[:-2])


@pytest.mark.slow
def test_diffmask_size_benchmark_runs_on_the_tiny_model(tmp_path, monkeypatch):
    """``benchmarks/bench_diffmask_size.py`` end to end on the tiny configs: one JSON row per
    size and seed, with the stop reason and finite held-out numbers."""
    copy_tiny_configs(tmp_path)
    module = load_benchmark("bench_diffmask_size")
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "configs/attribution/tiny_test.yaml", "--sizes", "16,24",
            "--seeds", "0", "--n_samples", "8", "--n_epochs", "1", "--out", "size"]  # fmt: skip
    assert module.main(argv) == 0
    rows = json.loads((tmp_path / "size/bench_diffmask_size.json").read_text())
    assert [(r["train_examples"], r["seed"]) for r in rows] == [(16, 0), (24, 0)]
    for r in rows:
        assert r["epochs"] == 1 and r["stop_reason"] == "epoch cap"
        assert 0.0 <= r["all_within_margin_share"] <= 1.0 and 0.0 < r["all_kept_share"] <= 1.0


@pytest.mark.slow
def test_effect_unseen_fits_the_head_without_the_held_out_titles(tmp_path, monkeypatch):
    """``--effect_unseen``: the seed's methods are built without the held-out candidates'
    titles (``effect_titles`` leaves them out: ``tests/test_sanity_retrained.py``), and the
    report says so."""
    copy_tiny_configs(tmp_path)
    monkeypatch.chdir(tmp_path)
    bench = _load_bench()
    fitted = []
    original = bench.build_methods

    def recording(*args, **kwargs):
        fitted.append(set(kwargs.get("effect_exclude", ())))
        return original(*args, **kwargs)

    monkeypatch.setattr(bench, "build_methods", recording)
    argv = [
        "--smoke",
        "--seeds",
        "0",
        "--methods",
        "diffmask_effect",
        "--quiet",
        "--effect_unseen",
        "--n_samples",
        "4",
    ]
    assert bench.main([*argv, "--out", "unseen"]) == 0
    data = json.loads((tmp_path / "unseen/bench_news.json").read_text())
    assert data["settings"]["effect_head_titles"].endswith(
        "without the held-out candidates' titles"
    )
    assert (
        "without the held-out candidates' titles" in (tmp_path / "unseen/bench_news.md").read_text()
    )
    assert len(fitted[-1]) >= 1  # the seed's build: the held-out candidates' news ids
