"""Standalone HTML report of a word-attribution run.

The report is one self-contained file: inline CSS and JavaScript, plots embedded as base64
data URIs, and no network references. All text that comes from data (titles, words, ids,
settings, table cells) is HTML-escaped; sample data reaches the small filter/sort script only
through escaped ``data-*`` attributes, never as script text. A Content-Security-Policy meta tag
allows no script but the report's own (by its SHA-256 hash), inline styles and ``data:`` images.
The stylesheet and the script are package resources (``reporting/assets/``), inlined on writing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import numbers
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from attribution_analysis.evaluation.word_statistics import TOP_WORD_FIELDS
from attribution_analysis.utils.io import atomic_write_text
from attribution_analysis.utils.numbers import finite_float


def _asset(name: str) -> str:
    """The text of ``reporting/assets/<name>`` (a package resource)."""
    return (
        resources.files("attribution_analysis.reporting")
        .joinpath("assets", name)
        .read_text(encoding="utf-8")
    )


def _script_hash(script: str) -> str:
    """The CSP source ``'sha256-<base64>'`` of an inline script's exact text."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


_JS = _asset("report.js")
_CSS = _asset("report.css")
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src {_script_hash(_JS)}; base-uri 'none'; form-action 'none'"
)
"""Only the report's own script may run (allowed by its hash); styles may be inline (heat-map
colours are style attributes), which cannot run code."""

#: RGB end points of the colour scale: positive scores shade red, negative ones blue.
POSITIVE_RGB: tuple[int, int, int] = (202, 0, 32)
NEGATIVE_RGB: tuple[int, int, int] = (5, 113, 176)
WHITE_RGB: tuple[int, int, int] = (255, 255, 255)

TOP_WORD_COLUMNS: tuple[str, ...] = TOP_WORD_FIELDS
#: Colour scales of the word heatmaps (see :func:`write_report`).
SCORE_SCALES: tuple[str, ...] = ("absolute", "per_sample")
MISSING = "—"
_STRIP_CHARS = string.punctuation + string.whitespace + "“”‘’«»…"

# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escape ``str(value)`` for text and quoted attribute values."""
    return html.escape(str(value), quote=True)


def _fmt_float(value: float) -> str:
    """Format a float for display with four decimals (scientific for very small/large values)."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1e5 or 0 < magnitude < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"


def _fmt(value: Any) -> str:
    """Format any cell value as (unescaped) display text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _fmt_float(float(value))
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _is_number(value: Any) -> bool:
    """Whether a cell holds a number (right-aligned in tables)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _data_number(value: Any) -> str:
    """Full-precision number for a ``data-*`` attribute (empty string when missing)."""
    number = finite_float(value)
    return "" if number is None else repr(number)


def _normalise_word(word: str) -> str:
    """Lower-case a word and strip surrounding punctuation, for matching gold rationale words."""
    return str(word).strip(_STRIP_CHARS).lower()


# ---------------------------------------------------------------------------------------------
# Generic blocks
# ---------------------------------------------------------------------------------------------


def _table(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], css_class: str) -> str:
    """Render rows of dicts as an HTML table with the given column order."""
    head = "".join(f'<th scope="col">{_e(col)}</th>' for col in columns)
    body_rows = []
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            cls = ' class="num"' if _is_number(value) else ""
            cells.append(f"<td{cls}>{_e(_fmt(value))}</td>")
        body_rows.append(f"<tr>{''.join(cells)}</tr>")
    body = "".join(body_rows) or f'<tr><td colspan="{len(columns)}">no rows</td></tr>'
    return (
        f'<div class="table-scroll"><table class="{_e(css_class)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _key_value_table(items: Mapping[str, Any]) -> str:
    """Render a mapping as a two-column key/value table."""
    rows = "".join(
        f'<tr><th scope="row">{_e(key)}</th><td>{_e(_fmt(value))}</td></tr>'
        for key, value in items.items()
    )
    return f'<table class="kv">{rows or "<tr><td>none</td></tr>"}</table>'


def _metric_tiles(summary: Mapping[str, Any]) -> str:
    """Render summary metrics as a grid of value tiles."""
    tiles = "".join(
        f'<div class="metric"><div class="metric-value">{_e(_fmt(value))}</div>'
        f'<div class="metric-name">{_e(key)}</div></div>'
        for key, value in summary.items()
    )
    return f'<div class="metrics">{tiles or "<p>No summary metrics.</p>"}</div>'


_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _figure(name: str, path: str | os.PathLike) -> str:
    """Embed one image file as a base64 data URI inside a captioned figure."""
    file = Path(path)
    mime = _MIME_BY_SUFFIX.get(file.suffix.lower(), "image/png")
    try:
        payload = base64.b64encode(file.read_bytes()).decode("ascii")
    except OSError:
        return (
            f'<figure class="missing"><figcaption>{_e(name)}: plot not found</figcaption></figure>'
        )
    return (
        f'<figure><img src="data:{mime};base64,{payload}" alt="{_e(name)}">'
        f"<figcaption>{_e(name)}</figcaption></figure>"
    )


def _figures(plots: Mapping[str, str | os.PathLike] | None) -> str:
    """Render a mapping of plot name to image path as a grid of embedded figures."""
    if not plots:
        return '<p class="muted">No plots.</p>'
    return '<div class="figures">' + "".join(_figure(n, p) for n, p in plots.items()) + "</div>"


def _section(section_id: str, heading: str, body: str) -> str:
    """Wrap ``body`` in a titled section."""
    return f'<section id="{_e(section_id)}"><h2>{_e(heading)}</h2>{body}</section>'


# ---------------------------------------------------------------------------------------------
# Sample cards
# ---------------------------------------------------------------------------------------------


def _finite_scores(scores: Sequence[Any]) -> list[float]:
    """The finite numbers among ``scores``."""
    return [s for s in (finite_float(v) for v in scores) if s is not None]


def _sample_scores(sample: Mapping[str, Any]) -> list[Any]:
    """All word and token scores of a sample."""
    return [*(sample.get("word_scores") or []), *(sample.get("token_scores") or [])]


def resolve_score_scale(samples: Sequence[Mapping[str, Any]], score_scale: str | None) -> str:
    """The heatmap colour scale: ``score_scale`` itself, or chosen from the data when ``None``.

    ``"absolute"`` when every finite word and token score of every sample lies in [0, 1]
    (probabilities, e.g. DIFFMASK's probability of keeping a word), else ``"per_sample"``.
    """
    if score_scale is not None:
        if score_scale not in SCORE_SCALES:
            raise ValueError(f"score_scale must be one of {SCORE_SCALES}, got {score_scale!r}")
        return score_scale
    bounded = all(0.0 <= s <= 1.0 for x in samples for s in _finite_scores(_sample_scores(x)))
    return "absolute" if bounded else "per_sample"


def _scale(scores: Sequence[Any], score_scale: str) -> tuple[float, bool]:
    """The score shown at full colour and whether the sample's scores are diverging.

    Absolute scale: 1 (scores are probabilities in [0, 1]). Per-sample scale: the sample's
    largest absolute score.
    """
    finite = _finite_scores(scores)
    diverging = bool(finite) and min(finite) < 0
    if score_scale == "absolute":
        return 1.0, diverging
    return (max(abs(s) for s in finite) if finite else 0.0), diverging


def _colour(score: float | None, scale: float) -> tuple[str, str]:
    """Background and text colour for a score; ``|score| >= scale`` gets the full colour.

    The intensity is ``t = min(|score| / scale, 1)``, mixed linearly from white to red
    (``score >= 0``) or blue (``score < 0``).
    """
    if score is None or scale <= 0:
        return "transparent", "inherit"
    t = min(abs(score) / scale, 1.0)
    end = POSITIVE_RGB if score >= 0 else NEGATIVE_RGB
    rgb = (round(w + (c - w) * t) for w, c in zip(WHITE_RGB, end))
    return f"rgb({','.join(map(str, rgb))})", "#fff" if t > 0.55 else "#1a1a1a"


def _heat_spans(
    units: Sequence[Any], scores: Sequence[Any], gold: set[str] | None, score_scale: str
) -> str:
    """Render words (or tokens) as colour-coded spans carrying their exact score."""
    scale, _ = _scale(scores, score_scale)
    spans = []
    for index, unit in enumerate(units):
        raw = scores[index] if index < len(scores) else None
        score = finite_float(raw)
        background, colour = _colour(score, scale)
        is_gold = gold is not None and _normalise_word(unit) in gold
        exact = MISSING if score is None else repr(score)
        hover = f"{unit}: {exact}" + (" (gold rationale)" if is_gold else "")
        classes = "w gold" if is_gold else "w"
        spans.append(
            f'<span class="{classes}" style="background:{background};color:{colour}" '
            f'title="{_e(hover)}" data-score="{_e(_data_number(raw))}">{_e(unit)}</span>'
        )
    return " ".join(spans)


def _scale_note(scores: Sequence[Any], score_scale: str) -> str:
    """Short description of the sample's colour scale."""
    finite = _finite_scores(scores)
    if score_scale == "absolute":
        top = _fmt_float(max(finite)) if finite else MISSING
        return f"colour scale: absolute 0–1, max score {top}"
    scale, diverging = _scale(scores, score_scale)
    kind = "diverging (red +, blue −)" if diverging else "sequential"
    return f"colour scale: {kind}, normalised by |score| max {_fmt_float(scale)}"


def _prob_row(label: str, value: Any, is_probability: bool) -> str:
    """One labelled value of the probability panel, with a bar for probabilities."""
    number = finite_float(value)
    bar = "<span></span>"
    if is_probability and number is not None:
        width = max(0.0, min(number, 1.0)) * 100
        bar = f'<span class="bar"><span style="width:{width:.1f}%"></span></span>'
    shown = MISSING if number is None else _fmt_float(number)
    return (
        f'<div class="prob"><span class="prob-label">{_e(label)}</span>{bar}'
        f'<span class="prob-value">{_e(shown)}</span></div>'
    )


def _probabilities(sample: Mapping[str, Any]) -> str:
    """Original and masked click probability and their divergence."""
    return (
        '<div class="probs">'
        + _prob_row("original p(click)", sample.get("original_prob"), True)
        + _prob_row("masked p(click)", sample.get("masked_prob"), True)
        + _prob_row("divergence", sample.get("divergence"), False)
        + "</div>"
    )


def _gold_line(gold_words: Sequence[str] | None) -> str:
    """Line listing the gold rationale words, if the sample has any annotation."""
    if gold_words is None:
        return ""
    words = ", ".join(_e(w) for w in gold_words) or "none"
    return f'<p class="gold-line"><span class="gold-key">gold rationale</span> {words}</p>'


def _ids_line(sample: Mapping[str, Any]) -> str:
    """Method badge and the impression, user and news ids."""
    parts = [
        f"{label} <code>{_e(sample.get(key, MISSING))}</code>"
        for label, key in (
            ("impression", "impression_id"),
            ("user", "user_id"),
            ("news", "news_id"),
        )
    ]
    method = sample.get("method")
    badge = f'<span class="badge">{_e(method)}</span> ' if method else ""
    return f'<div class="ids">{badge}{" · ".join(parts)}</div>'


def _history(titles: Sequence[Any]) -> str:
    """The user's recent history titles as a plain-text list."""
    items = "".join(f"<li>{_e(t)}</li>" for t in titles)
    body = f"<ol>{items}</ol>" if items else '<p class="muted">No history.</p>'
    return f'<aside class="history"><h4>Recent history ({len(titles)})</h4>{body}</aside>'


def _tokens_details(tokens: Sequence[Any], scores: Sequence[Any], score_scale: str) -> str:
    """Collapsible token-level heatmap."""
    if not tokens:
        return ""
    return (
        f"<details><summary>tokens ({len(tokens)})</summary>"
        f'<p class="heat tokens">{_heat_spans(tokens, scores, None, score_scale)}</p></details>'
    )


def _search_text(sample: Mapping[str, Any], words: Sequence[Any]) -> str:
    """Lower-cased text the filter box matches against."""
    fields = [
        sample.get("title"),
        sample.get("news_id"),
        sample.get("user_id"),
        sample.get("impression_id"),
        *words,
    ]
    return " ".join(str(f) for f in fields if f is not None).lower()


def _sample_card(index: int, sample: Mapping[str, Any], score_scale: str) -> str:
    """Render one sample as a card with its word heatmap, probabilities and history."""
    words = list(sample.get("words") or [])
    scores = list(sample.get("word_scores") or [])
    if not words:
        words, scores = list(sample.get("tokens") or []), list(sample.get("token_scores") or [])
    gold_words = sample.get("gold_words")
    gold = None if gold_words is None else {_normalise_word(w) for w in gold_words}
    title = str(sample.get("title") or "")
    same = " ".join(map(str, words)) == title
    original = "" if same else f'<p class="orig-title muted">{_e(title)}</p>'
    max_score = max(_finite_scores(scores), default=None)
    tokens = _tokens_details(
        sample.get("tokens") or [], sample.get("token_scores") or [], score_scale
    )
    attrs = (
        f'data-index="{index}" data-orig="{_e(_data_number(sample.get("original_prob")))}" '
        f'data-div="{_e(_data_number(sample.get("divergence")))}" '
        f'data-maxscore="{_e(_data_number(max_score))}" '
        f'data-search="{_e(_search_text(sample, words))}"'
    )
    main = (
        f'<div class="sample-main">{_ids_line(sample)}'
        f'<p class="heat title-heat">{_heat_spans(words, scores, gold, score_scale)}</p>'
        f'{original}<p class="scale-note muted">{_e(_scale_note(scores, score_scale))}</p>'
        f"{_gold_line(gold_words)}{_probabilities(sample)}{tokens}</div>"
    )
    history = _history(sample.get("history_titles") or [])
    return f'<article class="sample" {attrs}>{main}{history}</article>'


_LEGENDS = {
    "absolute": (
        "Shading: probability that the word is kept, absolute scale 0–1 "
        '(white = 0, <span class="swatch pos"></span> = 1), the same for every sample'
    ),
    "per_sample": (
        "Shading: attribution score normalised per sample by its largest |score| "
        '(<span class="swatch pos"></span> supports the click, '
        '<span class="swatch neg"></span> against it)'
    ),
}


def _samples_section(samples: Sequence[Mapping[str, Any]], score_scale: str) -> str:
    """Filter/sort controls followed by one card per sample."""
    controls = (
        '<div class="controls">'
        '<label>Filter <input type="search" id="sample-filter" '
        'placeholder="word, title, news id or user id" autocomplete="off"></label>'
        '<label>Sort by <select id="sample-sort">'
        '<option value="index">original order</option>'
        '<option value="orig">original probability</option>'
        '<option value="div">divergence</option>'
        '<option value="maxscore">max word score</option></select></label>'
        '<label>Order <select id="sample-dir"><option value="desc">descending</option>'
        '<option value="asc">ascending</option></select></label>'
        f'<span id="sample-count" class="muted">{len(samples)} samples</span></div>'
        f'<p class="legend muted" data-scale="{_e(score_scale)}">{_LEGENDS[score_scale]}; '
        '<span class="gold-demo">underlined</span> words are gold rationale words. '
        "Hover a word for its exact score.</p>"
    )
    cards = "".join(_sample_card(i, s, score_scale) for i, s in enumerate(samples))
    body = cards or '<p class="muted">No samples.</p>'
    return _section("samples", "Samples", f'{controls}<div id="samples-list">{body}</div>')


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


def _nav(has_comparison: bool) -> str:
    """In-page links to the report's sections."""
    targets = [("overview", "overview"), ("training", "training"), ("top-words", "top words")]
    if has_comparison:
        targets.append(("comparison", "comparison"))
    targets.append(("samples", "samples"))
    return "<nav>" + "".join(f'<a href="#{i}">{label}</a>' for i, label in targets) + "</nav>"


def _header(
    title: str, settings: Mapping[str, Any], summary: Mapping[str, Any], has_comparison: bool
) -> str:
    """Page title, navigation, settings table and summary metrics."""
    nav = _nav(has_comparison)
    grid = (
        '<div class="header-grid"><div><h4>Settings</h4>'
        f"{_key_value_table(settings)}</div><div><h4>Summary</h4>{_metric_tiles(summary)}</div>"
        "</div>"
    )
    return f"<header><h1>{_e(title)}</h1>{nav}</header>" + _section("overview", "Overview", grid)


def _comparison_section(
    comparison: Sequence[Mapping[str, Any]] | None,
    plots: Mapping[str, str | os.PathLike] | None,
) -> str:
    """Method-comparison table and plots (empty string when neither is given)."""
    if not comparison and not plots:
        return ""
    body = ""
    if comparison:
        columns = ["method"] + [k for row in comparison for k in row if k != "method"]
        body += _table(list(dict.fromkeys(columns)), comparison, "comparison")
    if plots:
        body += f'<div class="spaced">{_figures(plots)}</div>'
    return _section("comparison", "Method comparison", body)


def _top_words_section(top_words: Sequence[Mapping[str, Any]], rule: str | None) -> str:
    """The dataset's top-words table, preceded by the sentence stating how it was ranked."""
    note = f'<p class="rule muted">{_e(rule)}</p>' if rule else ""
    return _section(
        "top-words", "Top words", note + _table(TOP_WORD_COLUMNS, top_words, "top-words")
    )


def render_report(
    *,
    title: str,
    settings: Mapping[str, Any],
    summary: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]],
    top_words: Sequence[Mapping[str, Any]],
    training_plots: Mapping[str, str | os.PathLike] | None = None,
    comparison: Sequence[Mapping[str, Any]] | None = None,
    comparison_plots: Mapping[str, str | os.PathLike] | None = None,
    score_scale: str | None = None,
    top_words_rule: str | None = None,
) -> str:
    """Return the report as an HTML string (see :func:`write_report`)."""
    scale = resolve_score_scale(samples, score_scale)
    body = "".join(
        [
            _header(title, settings, summary, bool(comparison or comparison_plots)),
            _section("training", "Training curves", _figures(training_plots)),
            _top_words_section(top_words, top_words_rule),
            _comparison_section(comparison, comparison_plots),
            _samples_section(samples, scale),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main><script>{_JS}</script></body></html>\n"
    )


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    settings: dict,
    summary: dict,
    samples: list[dict],
    top_words: list[dict],
    training_plots: dict[str, str | Path] | None = None,
    comparison: list[dict] | None = None,
    comparison_plots: dict[str, str | Path] | None = None,
    score_scale: str | None = None,
    top_words_rule: str | None = None,
) -> Path:
    """Write a standalone HTML report of an attribution run to ``path`` (atomically).

    Sections: run settings and summary metrics; training curves; the dataset's top words
    (columns :data:`TOP_WORD_COLUMNS`, missing cells shown as a dash) under the sentence
    ``top_words_rule`` that states how they were selected and ranked; the method comparison
    (rows whose first key is ``method``) and its plots when given; then one card per sample with
    the title as a word heatmap, gold rationale words underlined, original/masked click
    probability, divergence and the user's recent history. Samples can be filtered and sorted
    in the page. Plot paths are embedded as base64 data URIs; the file references nothing
    outside itself.

    ``score_scale`` sets the heatmap colours, and the legend says which one is used:

    - ``"absolute"``: scores are probabilities in [0, 1] (DIFFMASK's probability of keeping a
      word) shown as they are, ``0`` white and ``1`` full red, identical across samples, so a
      sample in which nothing was kept stays white;
    - ``"per_sample"``: each sample's scores are divided by its largest ``|score|``, positive
      red and negative blue (for unbounded, signed methods such as gradients);
    - ``None`` (default): ``"absolute"`` when every finite word and token score of every sample
      lies in [0, 1], else ``"per_sample"``.
    """
    text = render_report(
        title=title,
        settings=settings,
        summary=summary,
        samples=samples,
        top_words=top_words,
        training_plots=training_plots,
        comparison=comparison,
        comparison_plots=comparison_plots,
        score_scale=score_scale,
        top_words_rule=top_words_rule,
    )
    return atomic_write_text(path, text)
