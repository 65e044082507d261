"""Plausibility metrics against a gold rationale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve

from attribution_analysis.evaluation.plausibility import (
    auprc,
    plausibility_metrics,
    topk_precision_recall_f1,
)


def test_auprc_by_hand():
    # PR points (recall, precision): (0, 1), (.5, 1), (.5, .5), (1, 2/3).
    # Trapezoids: 0.5 * 1 + 0 + 0.5 * (0.5 + 2/3) / 2 = 19/24.
    assert auprc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(19 / 24)


def test_auprc_perfect_and_no_gold():
    gold, scores = [0, 1, 1, 0], [0.1, 0.8, 0.9, 0.2]
    assert auprc(gold, scores) == pytest.approx(1.0)
    assert average_precision_score(gold, scores) == pytest.approx(1.0)
    assert math.isnan(auprc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_auprc_mean_equals_sklearn_on_random_examples():
    rng = np.random.default_rng(1)
    golds, scores, expected = [], [], []
    for _ in range(30):
        n = int(rng.integers(3, 25))
        gold = (rng.random(n) < 0.3).astype(int)
        gold[rng.integers(0, n)] = 1
        score = rng.normal(size=n) + gold
        precision, recall, _ = precision_recall_curve(gold, score)
        expected.append(auc(recall, precision))
        golds.append(gold)
        scores.append(score)
        assert auprc(gold, score) == pytest.approx(expected[-1])
    result = plausibility_metrics(golds, scores)
    assert result["auprc"] == pytest.approx(np.mean(expected))
    assert result["per_example"]["auprc"] == pytest.approx(expected)


def test_topk_by_hand_with_ties_broken_by_position():
    gold = [0, 1, 1, 0, 0]
    scores = [0.5, 0.9, 0.1, 0.5, 0.0]
    # k = 2 (gold length): tokens 1 and 0 (0 beats 3 on the tie) -> 1 hit.
    p, r, f1 = topk_precision_recall_f1(gold, scores)
    assert (p, r, f1) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    # k = 3: tokens 1, 0, 3 -> 1 hit of 3 selected, of 2 gold.
    p, r, f1 = topk_precision_recall_f1(gold, scores, k=3)
    assert (p, r, f1) == pytest.approx((1 / 3, 1 / 2, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)))
    # Pure tie: the first position wins.
    assert topk_precision_recall_f1([1, 0], [0.5, 0.5]).precision == 1.0
    assert topk_precision_recall_f1([0, 1], [0.5, 0.5]).precision == 0.0


def test_topk_edge_cases():
    assert topk_precision_recall_f1([0, 1], [0.9, 0.1]).f1 == 0.0
    assert all(math.isnan(v) for v in topk_precision_recall_f1([0, 0], [0.9, 0.1]))
    # k above the length selects everything.
    p, r, _ = topk_precision_recall_f1([1, 0, 0], [0.1, 0.2, 0.3], k=10)
    assert (p, r) == pytest.approx((1 / 3, 1.0))
    with pytest.raises(ValueError):
        topk_precision_recall_f1([1, 0], [0.1, 0.2], k=0)


def test_plausibility_metrics_macro_average_and_skips():
    golds = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0]]
    scores = [[0.9, 0.1, 0.2, 0.3], [0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3]]
    result = plausibility_metrics(golds, scores)
    assert result["n_examples"] == 3
    assert result["n_without_gold"] == 1
    # Example 0: perfect (F1 1). Example 1: top-2 = tokens 0, 1 -> F1 1/2.
    assert result["token_f1"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["token_precision"] == pytest.approx(0.75)
    assert math.isnan(result["per_example"]["token_f1"][2])


def test_validation():
    with pytest.raises(ValueError, match="example 1"):
        plausibility_metrics([[1, 0], [1, 0]], [[0.1, 0.2], [0.1]])
    with pytest.raises(ValueError, match="0 or 1"):
        auprc([2, 0], [0.1, 0.2])
