"""Dataset-level word statistics: which words an attribution method keeps, and how reliably.

A DIFFMASK word score is the probability that the word is kept, so almost every kept word
scores about 1 and a ranking by mean score puts words seen once on top. :func:`top_words`
instead ranks words by a lower confidence bound of the share of their occurrences that were
kept, which rewards words that were kept often *and* seen often, and it only ranks words with
a minimum number of occurrences (support).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from scipy.stats import norm

from attribution_analysis.utils.numbers import finite_float

#: Default minimum number of occurrences for a word to be ranked.
MIN_SUPPORT = 5
#: Default score at or above which a word occurrence counts as kept.
KEEP_THRESHOLD = 0.5
#: Default (two-sided) confidence level of the Wilson interval.
CONFIDENCE = 0.95

#: Columns of the rows returned by :func:`top_words`, in display order.
TOP_WORD_FIELDS: tuple[str, ...] = (
    "word",
    "kept_share_lcb",
    "kept_share",
    "kept_count",
    "count",
    "mean_score",
)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_lower_bound(successes: int, n: int, confidence: float = CONFIDENCE) -> float:
    """Lower end of the two-sided Wilson score interval of a binomial proportion.

    With ``p = successes / n`` and ``z = Phi^-1(1 - (1 - confidence) / 2)`` (the standard
    normal quantile; 1.95996 for 95 %)::

        lcb = (p + z^2 / (2n) - z * sqrt(p (1 - p) / n + z^2 / (4 n^2))) / (1 + z^2 / n)

    The bound lies in ``[0, p]``, grows with ``n`` at a fixed ``p`` and is 0 when nothing was
    kept. Raises ``ValueError`` when ``n < 1``, ``successes`` is outside ``[0, n]`` or
    ``confidence`` is outside ``(0, 1)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    _check_confidence(confidence)
    if successes == 0:
        return 0.0
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def _percent(confidence: float) -> str:
    """``0.95`` -> ``"95%"``, ``0.975`` -> ``"97.5%"``."""
    return f"{confidence * 100:g}%"


def top_words_rule(
    min_support: int = MIN_SUPPORT,
    threshold: float = KEEP_THRESHOLD,
    confidence: float = CONFIDENCE,
) -> str:
    """One sentence stating how :func:`top_words` selects and ranks words, for reports."""
    return (
        f"Words seen at least {min_support} times and kept at least once, ranked by the "
        f"{_percent(confidence)} Wilson "
        f"lower bound of the share of their occurrences kept (score >= {threshold:g}); "
        "ties broken by count, then alphabetically."
    )


#: The rule of :func:`top_words` with its default parameters.
TOP_WORDS_RULE: str = top_words_rule()


def top_words(
    records: Iterable[Mapping[str, Any]],
    k: int,
    min_support: int = MIN_SUPPORT,
    threshold: float = KEEP_THRESHOLD,
    confidence: float = CONFIDENCE,
) -> list[dict]:
    """The ``k`` words most reliably kept across ``records``.

    Each record holds parallel lists ``"words"`` and ``"word_scores"``. Words are lower-cased;
    occurrences whose score is missing or not finite are ignored. For every word with ``n``
    occurrences and scores ``s_1 .. s_n``:

    - ``count = n``, ``kept_count = #{i : s_i >= threshold}``,
    - ``kept_share = kept_count / n``, ``mean_score = (s_1 + ... + s_n) / n``,
    - ``kept_share_lcb`` = :func:`wilson_lower_bound` ``(kept_count, n, confidence)``.

    Only words with ``count >= min_support`` are ranked; when fewer than ``k`` words reach it,
    only those are returned (possibly none), the bar is never lowered. Rows are sorted by
    ``kept_share_lcb`` descending, then ``count`` descending, then ``word`` ascending. The rule
    in words is :func:`top_words_rule` with the same parameters.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if min_support < 1:
        raise ValueError(f"min_support must be >= 1, got {min_support}")
    _check_confidence(confidence)
    scores: dict[str, list[float]] = defaultdict(list)
    for record in records:
        words = record.get("words") or []
        word_scores = record.get("word_scores") or []
        for word, raw in zip(words, word_scores):
            score = finite_float(raw)
            if score is not None:
                scores[str(word).lower()].append(score)
    rows = []
    for word, values in scores.items():
        n = len(values)
        if n < min_support:
            continue
        kept = sum(s >= threshold for s in values)
        if kept == 0:  # a word never kept is not a "top" word, however often it was seen
            continue
        rows.append(
            {
                "word": word,
                "kept_share_lcb": wilson_lower_bound(kept, n, confidence),
                "kept_share": kept / n,
                "kept_count": kept,
                "count": n,
                "mean_score": math.fsum(values) / n,
            }
        )
    rows.sort(key=lambda r: (-r["kept_share_lcb"], -r["count"], r["word"]))
    return rows[:k]
