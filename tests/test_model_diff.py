"""Two models' explanations compared word by word: statistics against reference formulas and a
planted known answer."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import stats
from scipy.stats import false_discovery_control

from attribution_analysis.evaluation.model_diff import (
    benjamini_hochberg,
    candidate_changes,
    group_differences,
    kept_log_odds,
    paired_results,
    paired_t,
    ranking_auprc,
    robust_z,
    sign_flip_p_value,
    word_differences,
)
from attribution_analysis.methods.result import AttributionResult

TRIGGERS = ["exclusive", "miracle", "secret", "leaked", "bonus"]
OTHERS = [f"word{i}" for i in range(40)]


def test_benjamini_hochberg_by_hand_and_against_scipy() -> None:
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    assert q == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    p = np.random.default_rng(0).uniform(size=50) ** 3
    assert benjamini_hochberg(p) == pytest.approx(false_discovery_control(p).tolist())
    assert np.isnan(benjamini_hochberg([0.1, float("nan")])[1])


def test_sign_flip_p_value_matches_exact_enumeration() -> None:
    d = np.array([0.3, -0.1, 0.25, 0.05, 0.4, -0.2, 0.1, 0.15])
    flips = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
    exact = float((np.abs(flips @ d) >= abs(d.sum()) - 1e-12).mean())
    assert sign_flip_p_value(d, n_perm=20000, seed=1) == pytest.approx(exact, abs=0.01)
    assert sign_flip_p_value(np.zeros(5)) == 1.0


def _results(seed: int, rise: float, n: int = 240, drift: float = 0.0) -> tuple[list, list]:
    """``n`` candidates under models A and B: scores are noise, except that trigger words
    (in a third of the titles) score ``rise`` higher under B; with ``drift``, every word gets
    its own fixed shift under B, drawn from N(0, drift) (a retrained model's drift)."""
    rng = random.Random(seed)
    shift = {w: random.Random(f"{seed}-{w}").gauss(0, drift) for w in OTHERS + TRIGGERS}
    results_a, results_b = [], []
    for k in range(n):
        words = rng.sample(OTHERS, 6) + (rng.sample(TRIGGERS, 1) if k % 3 == 0 else [])
        rng.shuffle(words)
        a = [rng.uniform(0, 0.6) for _ in words]
        b = [s + rng.gauss(0, 0.1) + shift[w] + (rise if w in TRIGGERS else 0.0)
             for s, w in zip(a, words)]  # fmt: skip
        ids = {"impression_id": str(k), "news_id": f"N{k}", "user_id": "U1", "label": "1"}
        group = {"category": "injected" if k % 3 == 0 else "news"}
        for scores, out in ((a, results_a), (b, results_b)):
            out.append(AttributionResult("diffmask", words, scores, words, scores,
                                         original_output=float(np.mean(scores)), ids=ids,
                                         annotations=group))  # fmt: skip
    return results_a, results_b


def test_planted_rising_words_rank_first_and_are_significant() -> None:
    rows = word_differences(*_results(0, rise=0.4), min_support=5, n_perm=2000)
    top = [r["word"] for r in rows[: len(TRIGGERS)]]
    assert set(top) == set(TRIGGERS)
    assert all(r["significant"] for r in rows if r["word"] in TRIGGERS)
    assert ranking_auprc(rows, set(TRIGGERS)) == pytest.approx(1.0)
    for r in rows:
        assert r["diff_low"] <= r["diff"] <= r["diff_high"]
        assert 0 < r["p_value"] <= 1 and r["p_value"] <= r["q_value"] + 1e-12


def test_no_word_is_significant_when_nothing_changed() -> None:
    rows = word_differences(*_results(1, rise=0.0), min_support=5, n_perm=2000)
    assert len(rows) == len(OTHERS) + len(TRIGGERS)
    assert not any(r["significant"] for r in rows)


def test_paired_t_and_robust_z_by_formula() -> None:
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, 0.0])
    assert paired_t(d) == pytest.approx(stats.ttest_1samp(d, 0.0).statistic)
    assert paired_t(np.array([0.2])) == 0.0
    v = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, MAD 1
    assert robust_z(v) == pytest.approx([(x - 3.0) / 1.4826 for x in v])


def test_a_drift_every_word_shares_is_not_significant_but_a_larger_rise_is() -> None:
    """Every word drifts by its own fixed amount (sd 0.15), as between two seeds of one model:
    the paired test alone calls most of the 45 words significant (each drift is real and
    consistent), the minimum effect size (robust z >= 2) only the tails (2 here; about 5% of a
    normal drift lies beyond 2). A rise of 0.6 on the triggers on top of the same drift stands
    out: they rank first by t and are all significant."""
    drift = word_differences(*_results(2, rise=0.0, drift=0.15), n_perm=2000)
    plain = word_differences(*_results(2, rise=0.0, drift=0.15), n_perm=2000, min_effect=0.0)
    assert sum(r["significant"] for r in plain) >= 30
    assert sum(r["significant"] for r in drift) <= 3
    poisoned = word_differences(*_results(2, rise=0.6, drift=0.15), n_perm=2000)
    assert {r["word"] for r in poisoned[: len(TRIGGERS)]} == set(TRIGGERS)
    assert all(r["significant"] for r in poisoned if r["word"] in TRIGGERS)
    assert ranking_auprc(poisoned, set(TRIGGERS), "t") == pytest.approx(1.0)


def test_min_diff_drops_a_small_consistent_shift_and_keeps_a_large_one() -> None:
    """A small but consistent shift of the triggers (0.15 on scores of about 0.5; every other
    word unchanged) is significant by q and effect size alone; ``min_diff`` 0.3 requires a
    change of at least 0.3 and drops it, while a rise of 0.4 stays significant under it."""
    small = _results(3, rise=0.15)
    assert all(r["significant"] for r in word_differences(*small, n_perm=2000)
               if r["word"] in TRIGGERS)  # fmt: skip
    strict = word_differences(*small, n_perm=2000, min_diff=0.3)
    assert not any(r["significant"] for r in strict)
    large = word_differences(*_results(3, rise=0.4), n_perm=2000, min_diff=0.3)
    assert {r["word"] for r in large if r["significant"]} == set(TRIGGERS)
    a, b = small
    groups = group_differences(a, b, lambda r: r.annotations["category"], n_perm=1000,
                               min_diff=0.3)  # fmt: skip
    assert not any(r["significant"] for r in groups)


def test_groups_and_candidates() -> None:
    a, b = _results(0, rise=0.4)
    rows = group_differences(a, b, lambda r: r.annotations["category"], n_perm=1000)
    assert {r["group"] for r in rows} == {"injected", "news"}
    injected = [r for r in rows if r["group"] == "injected"]
    assert {r["word"] for r in injected[: len(TRIGGERS)]} == set(TRIGGERS)
    assert not any(r["word"] in TRIGGERS for r in rows if r["group"] == "news")
    changes = candidate_changes(a, b, top=1)
    assert len(changes) == len(a)
    assert changes[0]["rising"][0].split()[0] in TRIGGERS  # candidate 0 carries a trigger
    assert changes[0]["prob_a"] == a[0].original_output


def test_candidates_must_match() -> None:
    a, b = _results(0, rise=0.0, n=6)
    with pytest.raises(ValueError, match="not under B"):
        paired_results(a, b[:-1])
    b[2].words = ["other", *b[2].words[1:]]
    with pytest.raises(ValueError, match="tokenizers differ"):
        paired_results(a, b)


def _result(k: int, words: list[str], keep: list[float], masked: float | None) -> AttributionResult:
    ids = {"impression_id": str(k), "news_id": f"N{k}", "user_id": "U1", "label": "1"}
    return AttributionResult("diffmask", words, keep, words, keep, original_output=masked,
                             masked_output=masked, ids=ids)  # fmt: skip


def test_kept_log_odds_closed_form_and_missing_output() -> None:
    assert kept_log_odds(_result(0, ["a"], [1.0], 0.8)) == pytest.approx(np.log(4.0))
    assert kept_log_odds(_result(0, ["a"], [1.0], 0.5)) == 0.0
    assert kept_log_odds(_result(0, ["a"], [1.0], 0.0)) == pytest.approx(np.log(1e-6 / (1 - 1e-6)))
    with pytest.raises(ValueError, match="masked output"):
        kept_log_odds(_result(0, ["a"], [1.0], None))


def test_weighted_statistic_by_formula_and_kept_shares_stay_raw() -> None:
    """mean_a/mean_b/diff/t use score x weight; kept_a/kept_b the raw keep probabilities."""
    rng = np.random.default_rng(0)
    a, b, expected = [], [], []
    for k in range(12):
        ka, kb = rng.uniform(0, 1, 2)
        qa, qb = rng.uniform(0.05, 0.95, 2)
        a.append(_result(k, ["w"], [float(ka)], float(qa)))
        b.append(_result(k, ["w"], [float(kb)], float(qb)))
        expected.append((ka * np.log(qa / (1 - qa)), kb * np.log(qb / (1 - qb)), ka, kb))
    x = np.array(expected)
    (row,) = word_differences(a, b, min_support=1, n_perm=200, weight=kept_log_odds)
    assert row["mean_a"] == pytest.approx(x[:, 0].mean())
    assert row["mean_b"] == pytest.approx(x[:, 1].mean())
    assert row["t"] == pytest.approx(stats.ttest_1samp(x[:, 1] - x[:, 0], 0.0).statistic)
    assert row["kept_a"] == pytest.approx((x[:, 2] >= 0.5).mean())
    assert row["kept_b"] == pytest.approx((x[:, 3] >= 0.5).mean())
    (plain,) = word_differences(a, b, min_support=1, n_perm=200)
    assert plain["mean_a"] == pytest.approx(x[:, 2].mean())


def _keep_only(seed: int, confident_b: bool, n: int = 240) -> tuple[list, list]:
    """Keep probabilities that do not tell a trigger's rise: both models keep the trigger of a
    trigger title and one arbitrary other word (a different one under each model: DIFFMASK's
    non-unique solutions), but model B clicks trigger titles with 0.95 where A hesitates at
    0.55 (``confident_b``; otherwise both hesitate: a control)."""
    rng = random.Random(seed)
    a, b = [], []
    for k in range(n):
        trig = rng.sample(TRIGGERS, 1) if k % 3 == 0 else []
        words = rng.sample(OTHERS, 6) + trig
        keep_a = [1.0 if w in trig else 0.0 for w in words]
        keep_b = list(keep_a)
        keep_a[rng.randrange(6)] = 1.0
        keep_b[rng.randrange(6)] = 1.0
        qa = rng.uniform(0.5, 0.6) if trig else rng.uniform(0.2, 0.8)
        qb = (rng.uniform(0.93, 0.97) if confident_b else rng.uniform(0.5, 0.6)) if trig else qa
        a.append(_result(k, words, keep_a, qa))
        b.append(_result(k, words, keep_b, qb))
    return a, b


def test_kept_log_odds_finds_a_rise_that_keep_probabilities_miss() -> None:
    a, b = _keep_only(0, confident_b=True)
    keep = word_differences(a, b, n_perm=1000)
    assert not any(r["significant"] for r in keep if r["word"] in TRIGGERS)  # kept in both
    weighted = word_differences(a, b, n_perm=1000, weight=kept_log_odds)
    assert {r["word"] for r in weighted[: len(TRIGGERS)]} == set(TRIGGERS)
    assert all(r["significant"] for r in weighted if r["word"] in TRIGGERS)
    assert ranking_auprc(weighted, set(TRIGGERS)) == pytest.approx(1.0)
    control = word_differences(*_keep_only(1, confident_b=False), n_perm=1000,
                               weight=kept_log_odds)  # fmt: skip
    assert not any(r["significant"] for r in control if r["word"] in TRIGGERS)
