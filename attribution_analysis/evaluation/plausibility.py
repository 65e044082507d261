"""Plausibility: agreement of token attributions with a known gold rationale.

All functions take one example's scorable tokens only (the caller removes padding and special
tokens first): ``gold`` of shape [n_tokens] with values in {0, 1} (1 = the token belongs to the
rationale, e.g. a token planted as the cause of a click) and ``scores`` of shape [n_tokens]
(higher = more important).

* AUPRC: area under the precision-recall curve.  Range [0, 1], higher is better; a random
  ranking scores about the share of gold tokens.
* Top-k token precision / recall / F1 with k = the number of gold tokens by default.  Range
  [0, 1], higher is better.  With the default k, precision = recall = F1.
* Jensen-Shannon divergence (base 2) between the attribution mass ``|s| / sum |s|`` and the
  uniform distribution over the gold tokens (DIFFMASK paper, Section 4).  Range [0, 1], lower
  is better; it rewards putting the mass on the gold tokens *and* leaving the others near zero,
  which a ranking metric such as AUPRC ignores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import auc, precision_recall_curve

ArrayLike = Sequence[float] | np.ndarray


class TopKScores(NamedTuple):
    """Token precision, recall and F1 of the top-k tokens (each in [0, 1], higher is better)."""

    precision: float
    recall: float
    f1: float


def _as_arrays(gold: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate one example and return float arrays of shape [n_tokens]."""
    g = np.asarray(gold, dtype=float)
    s = np.asarray(scores, dtype=float)
    if g.ndim != 1 or s.ndim != 1:
        raise ValueError(f"gold and scores must be 1-D, got shapes {g.shape} and {s.shape}")
    if g.shape != s.shape:
        raise ValueError(f"{len(g)} gold labels but {len(s)} scores")
    if not np.isin(g, (0.0, 1.0)).all():
        raise ValueError("gold labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return g, s


def auprc(gold: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve of one example.

    ``precision_recall_curve(gold, scores)`` then ``auc(recall, precision)`` (trapezoid rule,
    as ERASER and ferret compute it; this differs slightly from average precision).

    Args:
        gold: shape [n_tokens], values in {0, 1}.
        scores: shape [n_tokens].

    Returns:
        A value in [0, 1], higher is better; nan if ``gold`` has no positive token.
    """
    g, s = _as_arrays(gold, scores)
    if g.sum() == 0:
        return math.nan
    precision, recall, _ = precision_recall_curve(g, s)
    return float(auc(recall, precision))


def rationale_js_divergence(gold: ArrayLike, scores: ArrayLike) -> float:
    """Jensen-Shannon divergence (log base 2) between attribution mass and the gold rationale.

    ``p = |scores| / sum |scores|`` (uniform when every score is 0), ``q = gold / sum gold``,
    ``JS = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``.

    Args:
        gold: shape [n_tokens], values in {0, 1}.
        scores: shape [n_tokens]; signed scores count by their magnitude.

    Returns:
        A value in [0, 1], lower is better; nan if ``gold`` has no positive token.
    """
    g, s = _as_arrays(gold, scores)
    if g.sum() == 0:
        return math.nan
    mass = np.abs(s)
    p = mass / mass.sum() if mass.sum() > 0 else np.full(len(s), 1.0 / len(s))
    q = g / g.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(max((kl(p) + kl(q)) / 2, 0.0), 1.0)


def top_k_indices(scores: ArrayLike, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties go to the earlier position (stable sort)."""
    s = np.asarray(scores, dtype=float)
    return np.argsort(-s, kind="stable")[:k]


def topk_precision_recall_f1(
    gold: ArrayLike, scores: ArrayLike, k: int | None = None
) -> TopKScores:
    """Token precision, recall and F1 of the ``k`` highest-scored tokens against ``gold``.

    Args:
        gold: shape [n_tokens], values in {0, 1}.
        scores: shape [n_tokens]; ties are broken by position (the earlier token is taken).
        k: how many tokens to select; default the number of gold tokens.  Values above
            n_tokens select every token.

    Returns:
        :class:`TopKScores`, each in [0, 1], higher is better.  All nan if ``gold`` has no
        positive token (recall undefined).  F1 is 0 when no selected token is gold.
    """
    g, s = _as_arrays(gold, scores)
    n_gold = int(g.sum())
    if k is None:
        k = n_gold
    elif k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_gold == 0:
        return TopKScores(math.nan, math.nan, math.nan)
    selected = top_k_indices(s, min(k, len(s)))
    hits = float(g[selected].sum())
    precision = hits / len(selected)
    recall = hits / n_gold
    f1 = 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
    return TopKScores(precision, recall, f1)


def plausibility_metrics(
    gold_list: Sequence[ArrayLike], scores_list: Sequence[ArrayLike]
) -> dict[str, float | int | dict[str, list[float]]]:
    """Plausibility metrics over examples (each of its own length [n_tokens_i]).

    Returns:
        ``auprc``, ``token_precision``, ``token_recall``, ``token_f1``: macro averages (plain
        mean over the examples that have at least one gold token; nan if none has), each in
        [0, 1], higher is better; ``n_examples``: examples given; ``n_without_gold``: examples
        left out of the means because they have no gold token; ``per_example``: name -> list of
        per-example values in input order (nan where undefined), e.g. for bootstrap intervals.
    """
    if len(gold_list) != len(scores_list):
        raise ValueError(f"{len(gold_list)} gold vectors but {len(scores_list)} score vectors")
    per_example: dict[str, list[float]] = {
        "auprc": [],
        "token_precision": [],
        "token_recall": [],
        "token_f1": [],
    }
    for index, (gold, scores) in enumerate(zip(gold_list, scores_list)):
        try:
            area = auprc(gold, scores)
            top = topk_precision_recall_f1(gold, scores)
        except ValueError as error:
            raise ValueError(f"example {index}: {error}") from error
        per_example["auprc"].append(area)
        per_example["token_precision"].append(top.precision)
        per_example["token_recall"].append(top.recall)
        per_example["token_f1"].append(top.f1)
    n_without_gold = sum(math.isnan(v) for v in per_example["auprc"])
    result: dict[str, float | int | dict[str, list[float]]] = {
        name: _nanmean(values) for name, values in per_example.items()
    }
    result["n_examples"] = len(gold_list)
    result["n_without_gold"] = n_without_gold
    result["per_example"] = per_example
    return result


def _nanmean(values: Sequence[float]) -> float:
    """Mean ignoring nan; nan (without a warning) when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan
