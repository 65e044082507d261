"""Standalone HTML report of a two-model comparison (``compare_models``): the words whose
attribution rose and fell under model B with their intervals, the groups, and the same titles
as heat maps under both models side by side.

Same conventions as :mod:`.html_report`: one self-contained file, every text from data
HTML-escaped, a Content-Security-Policy that allows no script (this page has none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attribution_analysis.reporting.html_report import (
    _CSS,
    CSP,
    _e,
    _fmt,
    _heat_spans,
    _key_value_table,
    _metric_tiles,
    _section,
    _table,
)
from attribution_analysis.utils.io import atomic_write_text

WORD_TABLE = ("word", "n", "mean_a", "mean_b", "diff", "diff_low", "diff_high", "t",
              "effect_z", "q_value", "significant")  # fmt: skip
GROUP_TABLE = ("group", "n_candidates", "prob_a", "prob_b", *WORD_TABLE)
MAX_CARDS = 200
_EXTRA_CSS = (
    ".pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px;"
    "border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}"
    ".pair h4{margin:0 0 4px 0;font-size:0.9em}"
)


def _tiles(summary: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("n_candidates", "mean_prob_a", "mean_prob_b", "n_words_tested",
            "n_significant_rising", "n_significant_falling")  # fmt: skip
    tiles = {k: summary.get(k) for k in keys}
    known = summary.get("known_words")
    if known:
        tiles["known words AUPRC"] = known.get("auprc")
        tiles["known words all in top 10"] = known.get("all_in_top_10")
    return tiles


def _words_section(words: Sequence[Mapping[str, Any]], top_k: int) -> str:
    rising = [w for w in words if w["diff"] > 0][:top_k]
    falling = [w for w in reversed(words) if w["diff"] < 0][:top_k]
    note = (
        '<p class="muted">diff = mean attribution under B minus under A (for DIFFMASK with '
        "the kept_log_odds statistic: the keep probability times the log-odds of the click "
        "probability that the kept words alone give, i.e. the decision the word carries), "
        "with its 95% bootstrap interval; t = the paired t statistic (the change over its "
        "standard error: "
        "words seen often with a consistent change rank first), the order of these lists; "
        "effect_z = the change as a robust z-score among all words (a change every word "
        "shares is not an outlier); q = Benjamini-Hochberg adjusted p-value of a paired "
        "sign-flip test; significant: q at or below the false discovery rate and |effect_z| "
        "at least the minimum effect.</p>"
    )
    body = (
        note + "<h3>Rising under model B</h3>" + _table(WORD_TABLE, rising, "words-rising")
        + "<h3>Falling under model B</h3>" + _table(WORD_TABLE, falling, "words-falling")
    )  # fmt: skip
    return _section("model-words", "Words whose role changed", body)


def _groups_section(groups: Sequence[Mapping[str, Any]], top_k: int) -> str:
    shown: list[Mapping[str, Any]] = []
    for name in dict.fromkeys(g["group"] for g in groups):
        rows = [g for g in groups if g["group"] == name]
        shown += sorted(rows, key=lambda g: -abs(g["diff"]))[:top_k]
    return _section("model-groups", "Groups of candidates", _table(GROUP_TABLE, shown, "groups"))


def _pair_card(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    def side(sample: Mapping[str, Any], label: str) -> str:
        spans = _heat_spans(sample.get("words") or [], sample.get("word_scores") or [], None,
                            "absolute")  # fmt: skip
        prob = _fmt(sample.get("original_prob"))
        return f"<div><h4>{_e(label)} · click probability {_e(prob)}</h4><p>{spans}</p></div>"

    ids = f"impression {a.get('impression_id')} · news {a.get('news_id')}"
    return (
        f'<div class="pair" data-news="{_e(a.get("news_id"))}">'
        f'<p class="muted" style="grid-column:1/3">{_e(ids)}</p>'
        f"{side(a, 'model A')}{side(b, 'model B')}</div>"
    )


def _samples_section(samples_a, samples_b) -> str:
    cards = "".join(_pair_card(a, b) for a, b in list(zip(samples_a, samples_b))[:MAX_CARDS])
    more = len(samples_a) - MAX_CARDS
    note = f'<p class="muted">{more} more candidates in candidates.csv.</p>' if more > 0 else ""
    legend = (
        '<p class="muted">Each title coloured by DIFFMASK\'s keep probability of every word '
        "(absolute scale: 0 white, 1 full red), under model A (left) and model B (right).</p>"
    )
    return _section("model-comparison", "Same titles under both models", legend + cards + note)


def render_model_comparison_report(
    *,
    settings: Mapping[str, Any],
    summary: Mapping[str, Any],
    words: Sequence[Mapping[str, Any]],
    groups: Sequence[Mapping[str, Any]],
    samples_a: Sequence[Mapping[str, Any]],
    samples_b: Sequence[Mapping[str, Any]],
    top_k: int = 15,
    title: str = "What changed between two recommenders' explanations",
) -> str:
    """The report as an HTML string (see :func:`write_model_comparison_report`)."""
    grid = (
        f'<div class="header-grid"><div><h4>Settings</h4>{_key_value_table(settings)}</div>'
        f"<div><h4>Summary</h4>{_metric_tiles(_tiles(summary))}</div></div>"
    )
    body = "".join([
        f"<header><h1>{_e(title)}</h1></header>",
        _section("overview", "Overview", grid),
        _words_section(words, top_k),
        _groups_section(groups, top_k) if groups else "",
        _samples_section(samples_a, samples_b),
    ])  # fmt: skip
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{_CSS}{_EXTRA_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_model_comparison_report(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the comparison report to ``path`` (atomically). Keyword arguments as
    :func:`render_model_comparison_report`: ``settings``, ``summary`` (``summary.json``),
    ``words``/``groups`` (rows of ``words_diff.csv``/``groups_diff.csv``), ``samples_a``/
    ``samples_b`` (``AttributionRun.rows()`` of the same candidates under each model)."""
    return atomic_write_text(path, render_model_comparison_report(**kwargs))


__all__ = ["render_model_comparison_report", "write_model_comparison_report"]
