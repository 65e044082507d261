"""Standalone HTML report of a word-attribution run.

The report is one self-contained file: inline CSS and JavaScript, plots embedded as base64
data URIs, and no network references. All text that comes from data (titles, words, ids,
settings, table cells) is HTML-escaped; sample data reaches the small filter/sort script only
through escaped ``data-*`` attributes, never as script text. A Content-Security-Policy meta tag
allows nothing but the report's own inline script and style and ``data:`` images.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attribution_analysis.evaluation.word_statistics import TOP_WORD_FIELDS
from attribution_analysis.utils.io import atomic_write_text
from attribution_analysis.utils.numbers import finite_float

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

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

_CSS = """
:root{--fg:#1a1a1a;--muted:#5f6368;--line:#dadce0;--bg:#f6f7f9;--card:#fff;--accent:#1a56a8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:1.6rem;margin:0 0 4px}
h2{font-size:1.2rem;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h4{margin:0 0 6px;font-size:.85rem;text-transform:uppercase;letter-spacing:.04em;
 color:var(--muted)}
nav{margin:6px 0 18px;font-size:.9rem}
nav a{color:var(--accent);margin-right:14px;text-decoration:none}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
 padding:16px 18px;margin:0 0 18px}
.muted{color:var(--muted)}
.header-grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);
 vertical-align:top;overflow-wrap:anywhere}
thead th{position:sticky;top:0;background:#eef1f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{width:40%;font-weight:600;color:var(--muted)}
.table-scroll{max-height:30rem;overflow:auto;border:1px solid var(--line);border-radius:6px}
.table-scroll table td,.table-scroll table th{border-bottom:1px solid #eceef1}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.metric{border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:#fbfcfd}
.metric-value{font-size:1.25rem;font-weight:600;font-variant-numeric:tabular-nums;
 overflow-wrap:anywhere}
.metric-name{font-size:.8rem;color:var(--muted);overflow-wrap:anywhere}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:14px}
figure{margin:0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
figcaption{font-size:.85rem;color:var(--muted)}
.spaced{margin-top:14px}
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin-bottom:6px}
.controls input{width:22rem;max-width:100%}
.controls input,.controls select{font:inherit;padding:4px 8px;border:1px solid var(--line);
 border-radius:5px;margin-left:4px}
.legend{font-size:.85rem;margin:4px 0 12px}
.rule{font-size:.88rem;margin:0 0 8px}
.swatch{display:inline-block;width:.9em;height:.9em;vertical-align:-1px;border-radius:2px}
.swatch.pos{background:rgb(202,0,32)}
.swatch.neg{background:rgb(5,113,176)}
.gold-demo,.w.gold{text-decoration:underline;text-decoration-thickness:3px;
 text-underline-offset:4px;text-decoration-color:#e3a008}
.sample{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1fr);gap:18px;
 border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:0 0 12px;
 background:var(--card)}
.sample[hidden]{display:none}
.ids{font-size:.82rem;color:var(--muted);margin-bottom:6px}
.ids code{font-size:.82rem;color:var(--fg)}
.badge{display:inline-block;background:#e8eefb;color:var(--accent);border-radius:10px;
 padding:0 8px;font-weight:600}
.heat{margin:4px 0;line-height:2.1}
.title-heat{font-size:1.15rem}
.w{padding:2px 4px;border-radius:3px;white-space:pre-wrap}
.tokens{font-size:.85rem;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.scale-note{font-size:.78rem;margin:0 0 6px}
.orig-title{margin:0 0 4px;font-size:.9rem}
.gold-line{font-size:.88rem;margin:0 0 6px}
.gold-key{font-weight:600;color:#8a5a00}
.probs{display:grid;gap:3px;max-width:30rem;font-size:.88rem;margin:4px 0 6px}
.prob{display:grid;grid-template-columns:9.5rem 1fr 5rem;align-items:center;gap:8px}
.prob-value{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:8px;background:#eceef1;border-radius:4px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--accent)}
details summary{cursor:pointer;font-size:.85rem;color:var(--muted)}
.history{border-left:1px solid var(--line);padding-left:14px;font-size:.88rem}
.history ol{margin:0;padding-left:1.3em;max-height:14rem;overflow:auto}
.history li{margin-bottom:2px}
@media (max-width:800px){.header-grid,.sample{grid-template-columns:minmax(0,1fr)}
 .history{border-left:0;padding-left:0}}
"""

_JS = """
(function () {
  "use strict";
  var list = document.getElementById("samples-list");
  var filter = document.getElementById("sample-filter");
  var sortKey = document.getElementById("sample-sort");
  var sortDir = document.getElementById("sample-dir");
  var count = document.getElementById("sample-count");
  if (!list || !filter || !sortKey || !sortDir || !count) { return; }
  var cards = Array.prototype.slice.call(list.querySelectorAll("article.sample"));
  function num(card, key) {
    var value = parseFloat(card.getAttribute("data-" + key));
    return isFinite(value) ? value : null;
  }
  function applyFilter() {
    var terms = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    cards.forEach(function (card) {
      var text = card.getAttribute("data-search") || "";
      var match = terms.every(function (term) { return text.indexOf(term) !== -1; });
      card.hidden = !match;
      if (match) { shown += 1; }
    });
    count.textContent = "showing " + shown + " of " + cards.length + " samples";
  }
  function compare(a, b) {
    var key = sortKey.value;
    var order = num(a, "index") - num(b, "index");
    if (key === "index") { return order; }
    var x = num(a, key), y = num(b, key);
    if (x === null || y === null) { return x === y ? order : (x === null ? 1 : -1); }
    if (x !== y) { return (sortDir.value === "asc" ? 1 : -1) * (x - y); }
    return order;
  }
  function applySort() {
    cards.slice().sort(compare).forEach(function (card) { list.appendChild(card); });
  }
  filter.addEventListener("input", applyFilter);
  sortKey.addEventListener("change", applySort);
  sortDir.addEventListener("change", applySort);
  applyFilter();
})();
"""


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
