"""Tests of the dataset-level top-word statistics (Wilson lower bound ranking)."""

from __future__ import annotations

import math

import pytest

from attribution_analysis.evaluation.word_statistics import (
    TOP_WORD_FIELDS,
    TOP_WORDS_RULE,
    top_words,
    top_words_rule,
    wilson_lower_bound,
)

Z95 = 1.959963984540054  # standard normal quantile at 0.975


def _wilson_closed_form(kept: int, n: int, z: float) -> float:
    """The Wilson score lower bound written out independently of the module."""
    p = kept / n
    return (p + z**2 / (2 * n) - z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (
        1 + z**2 / n
    )


def _records(*occurrences: tuple[str, float]) -> list[dict]:
    """One record per (word, score) occurrence."""
    return [
        {"words": [word], "word_scores": [score], "method": "diffmask"}
        for word, score in occurrences
    ]


def _word(word: str, kept: int, n: int, kept_score: float = 1.0) -> list[tuple[str, float]]:
    """``n`` occurrences of ``word``, the first ``kept`` of them kept."""
    return [(word, kept_score if i < kept else 0.0) for i in range(n)]


def test_wilson_bound_matches_closed_form() -> None:
    """8 kept of 10 at 95 % gives the hand-computed Wilson lower bound (about 0.4902)."""
    expected = _wilson_closed_form(8, 10, Z95)
    assert expected == pytest.approx(0.4902, abs=1e-4)
    assert wilson_lower_bound(8, 10, 0.95) == pytest.approx(expected, rel=1e-12)
    assert wilson_lower_bound(18, 20) == pytest.approx(_wilson_closed_form(18, 20, Z95))
    z90 = 1.6448536269514722
    assert wilson_lower_bound(3, 7, 0.90) == pytest.approx(_wilson_closed_form(3, 7, z90))


def test_wilson_bound_edges() -> None:
    """Nothing kept gives 0; the bound is below the share and rises with n."""
    assert wilson_lower_bound(0, 12) == pytest.approx(0.0, abs=1e-12)
    assert 0 < wilson_lower_bound(1, 1) < 1
    assert wilson_lower_bound(5, 10) < wilson_lower_bound(50, 100) < 0.5
    with pytest.raises(ValueError):
        wilson_lower_bound(1, 0)
    with pytest.raises(ValueError):
        wilson_lower_bound(3, 2)
    with pytest.raises(ValueError):
        wilson_lower_bound(1, 2, confidence=1.0)


def test_rare_perfect_word_ranks_below_frequent_kept_word() -> None:
    """A word seen once with score 1 ranks below a word kept 18 of 20 times."""
    records = _records(("Once", 1.0), *_word("often", 18, 20))
    rows = top_words(records, k=5, min_support=1)
    assert [r["word"] for r in rows] == ["often", "once"]
    often, once = rows
    assert once["kept_share"] == 1.0 and once["mean_score"] == 1.0
    assert often["kept_share"] == pytest.approx(0.9) and often["mean_score"] < 1.0
    assert often["kept_share_lcb"] > once["kept_share_lcb"]
    assert often["kept_count"] == 18 and often["count"] == 20
    assert often["kept_share_lcb"] == pytest.approx(_wilson_closed_form(18, 20, Z95))
    assert tuple(often) == TOP_WORD_FIELDS


def test_min_support_filters_and_never_lowers_the_bar() -> None:
    """Words below the support are dropped even when fewer than k words remain."""
    records = _records(*_word("common", 4, 5), *_word("rare", 4, 4), *_word("gone", 1, 1))
    rows = top_words(records, k=10, min_support=5)
    assert [r["word"] for r in rows] == ["common"]
    assert top_words(records, k=10, min_support=6) == []
    assert [r["word"] for r in top_words(records, k=10, min_support=4)] == ["rare", "common"]


def test_words_are_lower_cased_and_counted_across_records() -> None:
    """Case variants are one word; the threshold decides what counts as kept."""
    records = [
        {"words": ["Budget", "deal"], "word_scores": [0.6, 0.2]},
        {"words": ["budget", "BUDGET"], "word_scores": [0.5, 0.49]},
    ]
    (row,) = top_words(records, k=3, min_support=3)
    assert row["word"] == "budget" and row["count"] == 3 and row["kept_count"] == 2
    assert row["mean_score"] == pytest.approx((0.6 + 0.5 + 0.49) / 3)
    (strict,) = top_words(records, k=3, min_support=3, threshold=0.55)
    assert strict["kept_count"] == 1


def test_ties_ordered_by_count_then_word() -> None:
    """Equal bounds are broken by count (higher first), then alphabetically."""
    records = _records(
        *_word("zeta", 3, 6),
        *_word("alpha", 3, 6),
        *_word("low", 0, 6),
        *_word("mid", 0, 9),
        *_word("top", 5, 5),
    )
    rows = top_words(records, k=10, min_support=5)
    # words never kept ("mid", "low") are not listed, however often they were seen
    assert [r["word"] for r in rows] == ["top", "alpha", "zeta"]
    assert rows[1]["kept_share_lcb"] == rows[2]["kept_share_lcb"] > 0
    assert [r["word"] for r in top_words(records, k=2, min_support=5)] == ["top", "alpha"]


def test_non_finite_scores_are_ignored_and_k_zero() -> None:
    """nan/None scores are not occurrences; k=0 returns nothing."""
    records = [{"words": ["a"] * 4, "word_scores": [1.0, float("nan"), None, 0.0]}]
    (row,) = top_words(records, k=1, min_support=2)
    assert row["count"] == 2 and row["kept_count"] == 1
    assert top_words(records, k=0, min_support=1) == []
    with pytest.raises(ValueError):
        top_words(records, k=1, min_support=0)


def test_rule_sentence_states_parameters() -> None:
    """The rule sentence names the support, confidence and threshold."""
    assert TOP_WORDS_RULE == top_words_rule(5, 0.5, 0.95)
    assert "at least 5 times" in TOP_WORDS_RULE and "95% Wilson lower bound" in TOP_WORDS_RULE
    assert "score >= 0.5" in TOP_WORDS_RULE
    custom = top_words_rule(min_support=3, threshold=0.7, confidence=0.9)
    assert "at least 3 times" in custom and "90% Wilson" in custom and ">= 0.7" in custom
