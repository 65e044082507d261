"""Official MIND ranking metrics and the prediction-file format."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from attribution_analysis.models.ranking_metrics import (
    auc_score,
    format_predictions,
    mind_metrics,
    mrr_score,
    ndcg_score,
    ranks_from_scores,
    write_predictions,
)

# Two clicks: order by score is c0(1), c1(0), c2(1), c3(0).
IMP_A = ([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])
# One click ranked second.
IMP_B = ([0, 0, 1], [0.5, 0.2, 0.4])
# One click ranked sixth: counts for nDCG@10 but not for nDCG@5.
IMP_E = ([0, 0, 0, 0, 0, 1, 0], [7, 6, 5, 4, 3, 2, 1])

# Hand-computed values.
A = {
    "auc": 3 / 4,  # positives 0.9, 0.3 vs negatives 0.8, 0.1: 3 of 4 pairs ordered
    "mrr": (1 / 1 + 1 / 3) / 2,
    "ndcg@5": (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)),
    "ndcg@10": (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)),
}
B = {"auc": 1 / 2, "mrr": 1 / 2, "ndcg@5": 1 / math.log2(3), "ndcg@10": 1 / math.log2(3)}
E = {"auc": 1 / 6, "mrr": 1 / 6, "ndcg@5": 0.0, "ndcg@10": 1 / math.log2(7)}


def _official(labels, scores, k):
    """Direct transcription of the official MIND evaluation script's functions."""
    y_true, y_score = np.asarray(labels), np.asarray(scores)

    def dcg(y_t, y_s, k):
        order = np.argsort(y_s)[::-1]
        y_t = np.take(y_t, order[:k])
        return np.sum((2**y_t - 1) / np.log2(np.arange(len(y_t)) + 2))

    order = np.argsort(y_score)[::-1]
    y_ranked = np.take(y_true, order)
    mrr = np.sum(y_ranked / (np.arange(len(y_ranked)) + 1)) / np.sum(y_ranked)
    return roc_auc_score(y_true, y_score), mrr, dcg(y_true, y_score, k) / dcg(y_true, y_true, k)


@pytest.mark.parametrize(("impression", "expected"), [(IMP_A, A), (IMP_B, B), (IMP_E, E)])
def test_per_impression_values_by_hand(impression, expected):
    labels, scores = impression
    assert auc_score(labels, scores) == pytest.approx(expected["auc"])
    assert mrr_score(labels, scores) == pytest.approx(expected["mrr"])
    assert ndcg_score(labels, scores, 5) == pytest.approx(expected["ndcg@5"])
    assert ndcg_score(labels, scores, 10) == pytest.approx(expected["ndcg@10"])


def test_mind_metrics_means_and_skips_single_class_impressions():
    all_zero = ([0, 0], [0.3, 0.2])
    all_one = ([1, 1, 1], [0.1, 0.2, 0.3])
    result = mind_metrics([IMP_A, all_zero, IMP_B, all_one, IMP_E])
    assert result["skipped"] == 2
    assert result["impressions"] == 3
    for name in ("auc", "mrr", "ndcg@5", "ndcg@10"):
        assert result[name] == pytest.approx((A[name] + B[name] + E[name]) / 3), name


def test_mind_metrics_is_a_mean_of_impressions_not_pooled():
    # Pooled over all candidates the AUC would be different from the per-impression mean.
    imps = [([1, 0], [0.9, 0.8]), ([1, 0], [0.2, 0.1])]
    result = mind_metrics(imps)
    assert result["auc"] == 1.0
    pooled = roc_auc_score([1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1])
    assert pooled < 1.0


def test_mind_metrics_all_skipped_gives_nan():
    result = mind_metrics([([0, 0], [0.1, 0.2])])
    assert result["skipped"] == 1 and result["impressions"] == 0
    assert math.isnan(result["auc"]) and math.isnan(result["ndcg@10"])


def test_matches_official_script_on_random_impressions():
    rng = np.random.default_rng(0)
    impressions = []
    for _ in range(50):
        n = int(rng.integers(2, 12))
        labels = rng.integers(0, 2, size=n)
        labels[rng.integers(0, n)] = 1
        labels[rng.integers(0, n)] = 0
        impressions.append((labels.tolist(), rng.random(n).tolist()))
    result = mind_metrics(impressions)
    for k in (5, 10):
        rows = [
            _official(labels, scores, k) for labels, scores in impressions if len(set(labels)) > 1
        ]
        assert result["impressions"] == len(rows)
        assert result["auc"] == pytest.approx(np.mean([r[0] for r in rows]))
        assert result["mrr"] == pytest.approx(np.mean([r[1] for r in rows]))
        assert result[f"ndcg@{k}"] == pytest.approx(np.mean([r[2] for r in rows]))


def test_auc_equals_sklearn_with_many_tied_scores():
    """The rank-based AUC counts a tied positive/negative pair as one half, as sklearn's
    ``roc_auc_score`` (the official script's) does; scores from 3 values tie often."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 15))
        labels = rng.integers(0, 2, size=n)
        labels[0], labels[-1] = 1, 0
        scores = rng.integers(0, 3, size=n).astype(float)
        expected = roc_auc_score(labels, scores)
        assert auc_score(labels.tolist(), scores.tolist()) == pytest.approx(expected, abs=1e-12)
        assert mind_metrics([(labels, scores)])["auc"] == pytest.approx(expected, abs=1e-12)


def test_ties_follow_reversed_argsort():
    # Equal scores: the later candidate is ranked first.
    assert mrr_score([1, 0], [0.5, 0.5]) == pytest.approx(1 / 2)
    assert mrr_score([0, 1], [0.5, 0.5]) == pytest.approx(1.0)
    assert ndcg_score([1, 0], [0.5, 0.5], 5) == pytest.approx(1 / math.log2(3))
    assert auc_score([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tied pair counts one half
    assert ranks_from_scores([0.5, 0.5, 0.9]) == [3, 2, 1]


def test_metrics_of_prediction_ranks_equal_metrics_of_scores():
    # The official scorer reads ranks and uses 1 / rank as the score.
    impressions = [([1, 0, 0, 1], [0.5, 0.5, 0.2, 0.5]), ([0, 1, 0], [0.1, 0.1, 0.1])]
    from_ranks = [(y, [1 / r for r in ranks_from_scores(s)]) for y, s in impressions]
    assert mind_metrics(from_ranks) == pytest.approx(mind_metrics(impressions))


def test_validation_names_the_impression():
    with pytest.raises(ValueError, match="impression 1"):
        mind_metrics([IMP_A, ([1, 0], [0.1, 0.2, 0.3])])
    with pytest.raises(ValueError, match="impression 0.*0 or 1"):
        mind_metrics([([2, 0], [0.1, 0.2])])
    with pytest.raises(ValueError, match="impression 0"):
        mind_metrics([([1, 0], [0.1, float("nan")])])
    with pytest.raises(ValueError, match="all 0 or all 1"):
        auc_score([1, 1], [0.1, 0.2])


def test_format_predictions():
    lines = format_predictions([7, 8], [[0.1, 0.9, 0.5], [0.3, 0.2]])
    assert lines == ["7 [3,1,2]", "8 [1,2]"]
    with pytest.raises(ValueError):
        format_predictions([1], [])


def test_write_predictions(tmp_path):
    path = write_predictions(tmp_path / "out" / "prediction.txt", [1, 2], [[0.2, 0.4], [0.9]])
    assert path.read_text(encoding="utf-8") == "1 [2,1]\n2 [1]\n"
    assert [p.name for p in path.parent.iterdir()] == ["prediction.txt"]
