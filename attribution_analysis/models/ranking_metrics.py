"""Ranking metrics of the official MIND evaluation script, and its prediction-file format.

Every metric is computed per impression (one user, one list of candidates) and then averaged
with a plain mean over impressions; candidates are never pooled across impressions.

* ``auc``     ROC AUC of the impression's labels against its scores.  Range [0, 1], higher is
  better, 0.5 is a random ranking.
* ``mrr``     sum over clicked candidates of 1 / rank, divided by the number of clicks (not the
  first-hit reciprocal rank).  Range (0, 1], higher is better.
* ``ndcg@k``  DCG@k / ideal DCG@k with DCG@k = sum over the top k by score of
  (2**label - 1) / log2(i + 2), i the 0-based position.  Range [0, 1], higher is better.

Impressions whose labels are all 0 or all 1 have no AUC; they are skipped for *all* metrics
and counted under ``skipped``.

Ties: candidates are ordered as the official script does, ``np.argsort(scores)[::-1]``, with a
stable sort, so among candidates with equal scores the one that comes *later* in the impression
is ranked first.  (The official script uses numpy's default sort, which gives this order on
short arrays; the stable sort makes it the same on every platform and array length.)  AUC is
the Mann-Whitney statistic from average ranks, which counts a tied positive/negative pair as
one half: the value of sklearn's ``roc_auc_score`` (the official script's), at a fraction of its
cost per impression.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from attribution_analysis.utils.io import atomic_write_text

NDCG_KS: tuple[int, ...] = (5, 10)
"""The cut-offs reported by :func:`mind_metrics` (as ``ndcg@5`` and ``ndcg@10``)."""


def _as_arrays(labels: Sequence[int | float], scores: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Convert one impression to float arrays of shape [n_candidates], checking it is well formed.

    Raises:
        ValueError: if the shapes differ, the impression is empty or not 1-D, a label is not
            0 or 1, or a score is not finite.
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if y.size == 0:
        raise ValueError("empty impression")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _ranking_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices from best to worst: ``argsort(scores)[::-1]`` with a stable sort."""
    return np.argsort(scores, kind="stable")[::-1]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC ``[n] labels (0/1), [n] scores -> float`` as the Mann-Whitney U over
    ``n_pos * n_neg`` pairs, ties among scores taking their average rank (a tied pair counts
    one half)."""
    positive = y > 0
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    rank_sum = float(rankdata(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _mrr(y: np.ndarray, s: np.ndarray) -> float:
    y_ranked = y[_ranking_order(s)]
    return float(np.sum(y_ranked / (np.arange(len(y_ranked)) + 1)) / np.sum(y_ranked))


def _dcg(y: np.ndarray, s: np.ndarray, k: int) -> float:
    y_top = y[_ranking_order(s)[:k]]
    return float(np.sum((2.0**y_top - 1.0) / np.log2(np.arange(len(y_top)) + 2.0)))


def auc_score(labels: Sequence[int | float], scores: Sequence[float]) -> float:
    """ROC AUC of one impression.  Shapes [n_candidates].  Range [0, 1], higher is better.

    Raises:
        ValueError: if the labels are all 0 or all 1 (AUC undefined) or the input is malformed.
    """
    y, s = _as_arrays(labels, scores)
    if y.min() == y.max():
        raise ValueError("AUC is undefined when the labels are all 0 or all 1")
    return _auc(y, s)


def mrr_score(labels: Sequence[int | float], scores: Sequence[float]) -> float:
    """Mean reciprocal rank over all clicked candidates of one impression.

    ``sum(y / (arange(n) + 1)) / sum(y)`` with ``y`` the labels in ranking order.
    Shapes [n_candidates].  Range (0, 1], higher is better.

    Raises:
        ValueError: if no candidate is clicked or the input is malformed.
    """
    y, s = _as_arrays(labels, scores)
    if y.sum() == 0:
        raise ValueError("MRR is undefined without a clicked candidate")
    return _mrr(y, s)


def dcg_score(labels: Sequence[int | float], scores: Sequence[float], k: int = 10) -> float:
    """DCG@k of one impression: sum over the top k by score of (2**label - 1) / log2(i + 2).

    Shapes [n_candidates].  Range [0, sum of the k best gains], higher is better.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y, s = _as_arrays(labels, scores)
    return _dcg(y, s, k)


def ndcg_score(labels: Sequence[int | float], scores: Sequence[float], k: int = 10) -> float:
    """nDCG@k of one impression: ``dcg(labels, scores, k) / dcg(labels, labels, k)``.

    Shapes [n_candidates].  Range [0, 1], higher is better.

    Raises:
        ValueError: if no candidate is clicked (ideal DCG is 0) or the input is malformed.
    """
    best = dcg_score(labels, labels, k)
    if best == 0:
        raise ValueError("nDCG is undefined without a clicked candidate")
    return dcg_score(labels, scores, k) / best


def mind_metrics(
    impressions: Iterable[tuple[Sequence[int | float], Sequence[float]]],
) -> dict[str, float]:
    """Official MIND metrics over impressions given as ``(labels, scores)`` pairs.

    Args:
        impressions: per impression, labels (0/1) and scores, both of shape [n_candidates];
            the number of candidates may differ between impressions.

    Returns:
        ``auc``, ``mrr``, ``ndcg@5``, ``ndcg@10``: plain means over the impressions used
        (range [0, 1], higher is better; nan if none was used); ``skipped``: how many
        impressions were left out because their labels are all 0 or all 1; ``impressions``:
        how many were used.

    Raises:
        ValueError: naming the impression's 0-based index, if its labels and scores differ in
            length, it is empty, a label is not 0/1 or a score is not finite.
    """
    names = ["auc", "mrr", *(f"ndcg@{k}" for k in NDCG_KS)]
    values: dict[str, list[float]] = {name: [] for name in names}
    skipped = 0
    for index, (labels, scores) in enumerate(impressions):
        try:
            y, s = _as_arrays(labels, scores)
        except ValueError as error:
            raise ValueError(f"impression {index}: {error}") from error
        if y.min() == y.max():
            skipped += 1
            continue
        values["auc"].append(_auc(y, s))
        values["mrr"].append(_mrr(y, s))
        for k in NDCG_KS:
            values[f"ndcg@{k}"].append(_dcg(y, s, k) / _dcg(y, y, k))
    used = len(values["auc"])
    result = {name: float(np.mean(vals)) if used else math.nan for name, vals in values.items()}
    result["skipped"] = float(skipped)
    result["impressions"] = float(used)
    return result


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """1-based rank of each candidate, in the original candidate order (1 = highest score).

    Ties are ordered as in the metrics above (the later candidate gets the better rank), so
    scoring a prediction file (score = 1 / rank) gives the same metrics as the raw scores.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    ranks = np.empty(len(s), dtype=int)
    ranks[_ranking_order(s)] = np.arange(1, len(s) + 1)
    return ranks.tolist()


def format_predictions(
    impression_ids: Sequence[int | str], scores_list: Sequence[Sequence[float]]
) -> list[str]:
    """Lines of the official prediction file: ``"<impression id> [r1,r2,...]"``.

    ``r_j`` is the rank of candidate j (original order), rank 1 = highest score; e.g. scores
    ``[0.1, 0.9, 0.5]`` of impression 7 give ``"7 [3,1,2]"``.
    """
    if len(impression_ids) != len(scores_list):
        raise ValueError(f"{len(impression_ids)} impression ids but {len(scores_list)} score lists")
    lines = []
    for impression_id, scores in zip(impression_ids, scores_list):
        ranks = ",".join(str(r) for r in ranks_from_scores(scores))
        lines.append(f"{impression_id} [{ranks}]")
    return lines


def write_predictions(
    path: str | os.PathLike,
    impression_ids: Sequence[int | str],
    scores_list: Sequence[Sequence[float]],
) -> Path:
    """Write :func:`format_predictions` to ``path`` atomically, one line per impression."""
    lines = format_predictions(impression_ids, scores_list)
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
