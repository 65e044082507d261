"""What changed between two models' explanations of the same candidates: per word, per group of
candidates and per candidate, with intervals and a false-discovery-rate control.

Both runs must explain the same candidates (matched by impression and news id) with the same
tokenizer (same words). For every word (lowercased) seen at least ``min_support`` times, each
occurrence gives a pair of scores ``(a, b)``: the word's attribution in that title under model
A and under model B. Per word:

* ``mean_a``, ``mean_b``: mean attribution; ``kept_a``, ``kept_b``: share of occurrences with a
  score >= ``keep_threshold`` (DIFFMASK: the token must be kept);
* ``diff = mean_b - mean_a`` with a percentile-bootstrap 95% interval over occurrences;
* ``t``: the paired t statistic ``mean(b - a) / (sd(b - a) / sqrt(n))`` (standard error
  floored at 1e-12): the evidence for the change, which grows with how often the word was seen
  and how consistently it changed. Rows are ranked by ``rank_by`` (default ``t``; ``diff`` or
  ``diff_low``, the interval's lower end);
* ``effect_z``: the word's ``diff`` as a robust z-score among all words of the table (of its
  group, for groups): ``(diff - median) / (1.4826 * MAD)``. A change that every word shares (a
  model that scores everything higher, or the drift of a retrained model) is not an outlier;
* ``p_value``: two-sided paired sign-flip permutation test of ``mean(b - a) = 0`` (under the
  null, each pair's difference is as likely to have either sign); ``q_value``: the
  Benjamini-Hochberg adjusted p-value over all words tested together; ``significant``:
  ``q_value <= fdr`` and ``|effect_z| >= min_effect`` (default 2): reliable *and* large
  against how much words change in general between the two models; with ``min_diff`` > 0
  (default 0, off) also ``|diff| >= min_diff``, a change large in the statistic's own units
  (the log fold-change threshold of differential-expression analysis): a small but
  consistent shift shared by a cluster of similar titles (two retrained models that
  calibrate one kind of news differently) can stand out from the median word without being
  large.

Occurrences of one word in one title are rare (titles repeat words seldom), so occurrences are
treated as independent pairs.

``weight``: a per-candidate factor of the compared statistic (``mean_*``, ``diff``, ``t``, ...;
the ``kept_*`` shares stay on the raw scores). :func:`kept_log_odds` is the one DIFFMASK
comparisons use by default: a keep probability says whether a word is *needed* for the model's
output, not what that output is, so "needed" under a model that clicks a title with 0.95 and
"needed" under one that hesitates at 0.55 would count the same. Weighted by the log-odds of the
click probability that the kept words alone give (the explanation's own masked output), a word
counts by the decision it carries: positive for a click, negative for a non-click, near 0 for a
coin flip.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from attribution_analysis.evaluation.plausibility import auprc
from attribution_analysis.evaluation.statistics import bootstrap_ci
from attribution_analysis.methods.result import AttributionResult

WORD_COLUMNS = ("word", "n", "mean_a", "mean_b", "kept_a", "kept_b", "diff", "diff_low",
                "diff_high", "t", "effect_z", "p_value", "q_value", "significant")  # fmt: skip
"""Columns of ``words_diff.csv`` (``groups_diff.csv`` adds ``group`` first)."""
RANK_KEYS = ("t", "diff", "diff_low")
"""What the word tables can be ranked by (``rank_by``)."""


def _key(result: AttributionResult) -> tuple:
    ids = result.ids
    return (ids.get("impression_id"), ids.get("news_id"), ids.get("user_id"))


def paired_results(
    results_a: Sequence[AttributionResult], results_b: Sequence[AttributionResult]
) -> list[tuple[AttributionResult, AttributionResult]]:
    """Results of the same candidates under both models, in A's order. Raises ``ValueError``
    when a candidate is missing from B or its words differ (another tokenizer)."""
    by_key = {_key(r): r for r in results_b}
    pairs = []
    for a in results_a:
        b = by_key.get(_key(a))
        if b is None:
            raise ValueError(f"candidate {_key(a)} is explained under model A but not under B")
        if [w.lower() for w in a.words] != [w.lower() for w in b.words]:
            raise ValueError(
                f"candidate {_key(a)} has other words under the two models ({a.words[:6]} vs "
                f"{b.words[:6]}): the models' tokenizers differ"
            )
        pairs.append((a, b))
    if not pairs:
        raise ValueError("no candidate to compare")
    return pairs


def sign_flip_p_value(d: np.ndarray, n_perm: int = 4000, seed: int = 0) -> float:
    """Two-sided p-value of ``mean(d) = 0`` by random sign flips of the paired differences
    ``d`` (``(1 + hits) / (1 + n_perm)``, never 0)."""
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    if observed == 0.0:
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 1000):
        count = min(1000, n_perm - start)
        signs = rng.choice((-1.0, 1.0), size=(count, d.size))
        hits += int((np.abs(signs @ d / d.size) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + n_perm)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), same order; nan stays nan."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return q.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q.tolist()


Weight = Callable[[AttributionResult], float]


def kept_log_odds(result: AttributionResult, eps: float = 1e-6) -> float:
    """``log(q / (1 - q))`` of the click probability ``q`` that the explanation's kept words
    alone give (``masked_output``, clamped to ``[eps, 1 - eps]``): the per-candidate weight of
    DIFFMASK comparisons (module doc). Raises ``ValueError`` without a masked output."""
    q = result.masked_output
    if q is None or not math.isfinite(q):
        raise ValueError(
            f"candidate {_key(result)} has no masked output: the kept_log_odds statistic needs "
            "DIFFMASK explanations with their masked click probability"
        )
    q = min(max(float(q), eps), 1.0 - eps)
    return math.log(q / (1.0 - q))


def _occurrences(pairs, weight: Weight | None = None) -> dict[str, list[tuple]]:
    """Per word: ``(score_a, score_b, weight_a, weight_b)`` for each occurrence."""
    out: dict[str, list[tuple]] = defaultdict(list)
    for a, b in pairs:
        wa, wb = (1.0, 1.0) if weight is None else (weight(a), weight(b))
        for word, sa, sb in zip(a.words, a.word_scores, b.word_scores):
            out[word.lower()].append((float(sa), float(sb), wa, wb))
    return out


def _word_row(word: str, occurrences: list[tuple], keep: float, n_boot: int,
              n_perm: int, seed: int) -> dict:  # fmt: skip
    x = np.asarray(occurrences, dtype=float)  # [n, 4]: scores a, b and weights a, b
    stat = x[:, :2] * x[:, 2:]  # [n, 2]: the compared statistic
    d = stat[:, 1] - stat[:, 0]
    diff, low, high = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {
        "word": word,
        "n": len(x),
        "mean_a": float(stat[:, 0].mean()),
        "mean_b": float(stat[:, 1].mean()),
        "kept_a": float((x[:, 0] >= keep).mean()),
        "kept_b": float((x[:, 1] >= keep).mean()),
        "diff": diff,
        "diff_low": low,
        "diff_high": high,
        "t": paired_t(d),
        "p_value": sign_flip_p_value(d, n_perm, seed),
    }


def paired_t(d: np.ndarray) -> float:
    """``mean(d) / (sd(d) / sqrt(n))`` (sample sd; the standard error floored at 1e-12; 0 for
    fewer than 2 values)."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return 0.0
    se = max(float(d.std(ddof=1)) / math.sqrt(d.size), 1e-12)
    return float(d.mean()) / se


def robust_z(values: Sequence[float]) -> list[float]:
    """``(v - median) / (1.4826 * MAD)`` of each value (MAD floored at 1e-12)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return []
    median = np.median(v)
    scale = max(1.4826 * float(np.median(np.abs(v - median))), 1e-12)
    return ((v - median) / scale).tolist()


def _with_q(
    rows: list[dict], fdr: float, min_effect: float, rank_by: str, min_diff: float = 0.0
) -> list[dict]:
    """Add ``effect_z`` (within each ``group``, if rows have one), ``q_value`` and
    ``significant``; sort by ``rank_by``, largest first."""
    if rank_by not in RANK_KEYS:
        raise ValueError(f"rank_by must be one of {RANK_KEYS}, got {rank_by!r}")
    by_group: dict[str | None, list[dict]] = defaultdict(list)
    for row in rows:
        by_group[row.get("group")].append(row)
    for members in by_group.values():
        for row, z in zip(members, robust_z([r["diff"] for r in members])):
            row["effect_z"] = z
    for row, q in zip(rows, benjamini_hochberg([r["p_value"] for r in rows])):
        row["q_value"] = q
        row["significant"] = bool(
            q <= fdr and abs(row["effect_z"]) >= min_effect and abs(row["diff"]) >= min_diff
        )
    return sorted(rows, key=lambda r: (-r[rank_by], r["word"]))


def word_differences(
    results_a: Sequence[AttributionResult],
    results_b: Sequence[AttributionResult],
    min_support: int = 5,
    keep_threshold: float = 0.5,
    fdr: float = 0.05,
    n_boot: int = 1000,
    n_perm: int = 4000,
    seed: int = 0,
    min_effect: float = 2.0,
    rank_by: str = "t",
    weight: Weight | None = None,
    min_diff: float = 0.0,
) -> list[dict]:
    """One row per word seen at least ``min_support`` times (columns :data:`WORD_COLUMNS`),
    sorted by ``rank_by`` (most risen under B first); ``weight``: see the module doc."""
    occurrences = _occurrences(paired_results(results_a, results_b), weight)
    rows = [
        _word_row(word, occ, keep_threshold, n_boot, n_perm, seed)
        for word, occ in sorted(occurrences.items())
        if len(occ) >= min_support
    ]
    return _with_q(rows, fdr, min_effect, rank_by, min_diff)


def group_differences(
    results_a: Sequence[AttributionResult],
    results_b: Sequence[AttributionResult],
    group_of: Callable[[AttributionResult], str | None],
    min_support: int = 5,
    keep_threshold: float = 0.5,
    fdr: float = 0.05,
    n_boot: int = 1000,
    n_perm: int = 4000,
    seed: int = 0,
    min_effect: float = 2.0,
    rank_by: str = "t",
    weight: Weight | None = None,
    min_diff: float = 0.0,
) -> list[dict]:
    """:func:`word_differences` within each group of candidates (``group_of(result)``, ``None``:
    no group); the false discovery rate is controlled over all groups and words together.
    Rows add ``group`` and the group's candidate count and mean click probabilities."""
    groups: dict[str, list] = defaultdict(list)
    for a, b in paired_results(results_a, results_b):
        name = group_of(a)
        if name is not None:
            groups[str(name)].append((a, b))
    rows = []
    for name, pairs in sorted(groups.items()):
        info = {
            "group": name,
            "n_candidates": len(pairs),
            "prob_a": _mean([a.original_output for a, _ in pairs]),
            "prob_b": _mean([b.original_output for _, b in pairs]),
        }
        for word, occ in sorted(_occurrences(pairs, weight).items()):
            if len(occ) >= min_support:
                rows.append({**info, **_word_row(word, occ, keep_threshold, n_boot, n_perm, seed)})
    rows = _with_q(rows, fdr, min_effect, rank_by, min_diff)
    return sorted(rows, key=lambda r: (r["group"], -r[rank_by], r["word"]))


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def candidate_changes(
    results_a: Sequence[AttributionResult], results_b: Sequence[AttributionResult], top: int = 3
) -> list[dict]:
    """Per candidate: ids, click probability under each model and the ``top`` words whose
    attribution rose and fell most (``word (b - a)``)."""
    out = []
    for a, b in paired_results(results_a, results_b):
        deltas = [(w, float(sb) - float(sa)) for w, sa, sb in zip(a.words, a.word_scores,
                                                                   b.word_scores)]  # fmt: skip
        rising = sorted((x for x in deltas if x[1] > 0), key=lambda x: -x[1])[:top]
        falling = sorted((x for x in deltas if x[1] < 0), key=lambda x: x[1])[:top]
        out.append({
            **{k: a.ids.get(k) for k in ("impression_id", "user_id", "news_id", "label")},
            "prob_a": a.original_output,
            "prob_b": b.original_output,
            "rising": [f"{w} ({d:+.2f})" for w, d in rising],
            "falling": [f"{w} ({d:+.2f})" for w, d in falling],
        })  # fmt: skip
    return out


def ranking_auprc(rows: Sequence[dict], positives: set[str], key: str = "t") -> float:
    """AUPRC of ``positives`` (e.g. known trigger words) against the other words, ranked by
    ``key``: 1.0 when every positive word ranks above every other word."""
    gold = [int(r["word"] in positives) for r in rows]
    return auprc(gold, [r[key] for r in rows])


__all__ = [
    "WORD_COLUMNS",
    "benjamini_hochberg",
    "candidate_changes",
    "group_differences",
    "kept_log_odds",
    "paired_results",
    "paired_t",
    "ranking_auprc",
    "robust_z",
    "sign_flip_p_value",
    "word_differences",
]
