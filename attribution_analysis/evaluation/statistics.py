"""Bootstrap confidence intervals and the registry of every metric's range and direction."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from attribution_analysis.evaluation.faithfulness import EFFECT_THRESHOLD

_MAX_DRAWS_PER_CHUNK = 10_000_000


def bootstrap_ci(
    values: Iterable[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap (1 - alpha) confidence interval of the mean.

    nan values are dropped first.  Returns ``(mean, low, high)``; all nan if no value is left,
    and ``(v, v, v)`` for a single value.  The same ``seed`` gives the same interval.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    means = _bootstrap_means(x, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``x`` with replacement, drawn in memory-bounded chunks."""
    rows = max(1, _MAX_DRAWS_PER_CHUNK // x.size)
    means = []
    for start in range(0, n_boot, rows):
        count = min(rows, n_boot - start)
        means.append(x[rng.integers(0, x.size, size=(count, x.size))].mean(axis=1))
    return np.concatenate(means)


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name, value range (inf for unbounded), direction and meaning."""

    name: str
    range: tuple[float, float]
    higher_is_better: bool
    description: str


def _spec(name: str, low: float, high: float, higher: bool, description: str) -> MetricSpec:
    return MetricSpec(name, (low, high), higher, description)


_INF = math.inf

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        # Ranking (official MIND script; per impression, then mean).
        _spec("auc", 0, 1, True, "ROC AUC per impression, mean over impressions (0.5 = random)."),
        _spec("mrr", 0, 1, True, "Sum of 1/rank over clicked items / number of clicks."),
        _spec("ndcg@5", 0, 1, True, "nDCG of the top 5 candidates per impression."),
        _spec("ndcg@10", 0, 1, True, "nDCG of the top 10 candidates per impression."),
        # Plausibility (against a gold rationale).
        _spec("auprc", 0, 1, True, "Area under the precision-recall curve vs the gold tokens."),
        _spec("token_precision", 0, 1, True, "Precision of the top-k tokens, k = gold length."),
        _spec("token_recall", 0, 1, True, "Recall of the top-k tokens, k = gold length."),
        _spec("token_f1", 0, 1, True, "F1 of the top-k tokens, k = gold length."),
        # Faithfulness (model output under token removal; p in [0, 1]).
        _spec(
            "comprehensiveness_aopc",
            -1,
            1,
            True,
            "Mean over the fraction grid of p(x) - p(x without the top-k tokens).",
        ),
        _spec(
            "sufficiency_aopc",
            -1,
            1,
            False,
            "Mean over the fraction grid of p(x) - p(only the top-k tokens).",
        ),
        _spec("deletion_auc", 0, 1, False, "Area under p while deleting tokens best-first."),
        _spec("insertion_auc", 0, 1, True, "Area under p while inserting tokens best-first."),
        _spec(
            "loo_kendall",
            -1,
            1,
            True,
            "Kendall tau between scores and the leave-one-out effects p(x) - p(x without i).",
        ),
        _spec(
            "supporting_rank",
            0,
            1,
            False,
            "Mean relative rank (0 = first, 1 = last) of the tokens whose removal lowers the "
            f"decision's probability by more than {EFFECT_THRESHOLD} (leave-one-out).",
        ),
        _spec(
            "opposing_rank",
            0,
            1,
            True,
            "Mean relative rank (0 = first, 1 = last) of the tokens whose removal raises the "
            f"decision's probability by more than {EFFECT_THRESHOLD} (leave-one-out).",
        ),
        # Sparsity of |scores|.
        _spec("gini", 0, 1, True, "Gini coefficient of |scores|; higher = more concentrated."),
        _spec("entropy", 0, 1, False, "Entropy of |scores| normalised by log(n); lower = sparser."),
        _spec("top_mass", 0, 1, True, "Share of |scores| on the top 20% of tokens."),
        # Cost, completeness and sanity.
        _spec("seconds_per_example", 0, _INF, False, "Wall-clock seconds to explain one example."),
        _spec(
            "completeness_error",
            0,
            _INF,
            False,
            "|sum of attributions - (F(x) - F(baseline))| / |F(x) - F(baseline)|.",
        ),
        _spec(
            "sanity_spearman",
            -1,
            1,
            False,
            "Sanity (fixed probe): Spearman correlation of attributions before/after randomising "
            "the model's top layers and head, trained parts (DIFFMASK's probe and baseline) kept "
            "fixed; high means the method ignores the model.",
        ),
        _spec(
            "sanity_spearman_retrained",
            -1,
            1,
            False,
            "Sanity (retrained): as sanity_spearman, but DIFFMASK's probe and baseline are "
            "retrained from scratch on the randomised model (same examples, settings and "
            "training); tests the amortised explainer as a whole (target <= 0.3).",
        ),
        _spec(
            "within_margin_share",
            0,
            1,
            True,
            "Share of examples whose masked prediction stays within the divergence margin and "
            "agrees with the original prediction (constraint satisfaction).",
        ),
        _spec(
            "kept_share",
            0,
            1,
            False,
            "Share of scorable tokens a mask keeps (not masked); lower = sparser explanation.",
        ),
    )
}
"""Every reported metric by name."""
