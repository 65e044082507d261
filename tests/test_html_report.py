"""Tests of the standalone HTML report and its plots (unit tests plus a headless-Chromium test)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from attribution_analysis.evaluation.word_statistics import TOP_WORDS_RULE
from attribution_analysis.reporting.html_report import (
    render_report,
    resolve_score_scale,
    write_report,
)
from attribution_analysis.reporting.plots import plot_curves, plot_training_history
from tests.helpers_browser import start_chromium

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO_ROOT / "output" / "test_artifacts" / "report_screenshot.png"

ALERT_TITLE = "<script>alert(1)</script>"
PWN_SCRIPT_TITLE = "<script>window.__pwned=1</script>"
PWN_IMG_TITLE = '<img src=x onerror="window.__pwned=2">'


def _sample(index: int, title: str, **overrides) -> dict:
    """A sample dict whose words are the whitespace-split title."""
    words = title.split()
    scores = [round(0.9 - 0.2 * i, 4) for i in range(len(words))]
    sample = {
        "impression_id": f"imp-{index}",
        "user_id": f"U{100 + index}",
        "news_id": f"N{200 + index}",
        "title": title,
        "tokens": [w.lower() for w in words],
        "token_scores": scores,
        "words": words,
        "word_scores": scores,
        "gold_words": None,
        "original_prob": 0.5,
        "masked_prob": 0.4,
        "divergence": 0.01,
        "history_titles": [f"History headline {index}-{k}" for k in range(3)],
        "method": "diffmask",
    }
    sample.update(overrides)
    return sample


def _samples() -> list[dict]:
    """Samples with distinct probabilities and divergences, two of them hostile."""
    return [
        _sample(
            0,
            "Senate passes budget deal after marathon session",
            original_prob=0.8123,
            masked_prob=0.7911,
            divergence=0.0042,
            gold_words=["budget", "Senate"],
        ),
        _sample(
            1,
            "Storm brings heavy snow to Denver",
            original_prob=0.3456,
            masked_prob=None,
            divergence=0.2718,
            word_scores=[0.3, -0.5, 0.1, 0.0, -0.05, 0.2],
        ),
        _sample(2, ALERT_TITLE, original_prob=0.6, divergence=0.05),
        _sample(3, PWN_SCRIPT_TITLE, original_prob=0.1, divergence=None),
        _sample(
            4,
            PWN_IMG_TITLE,
            original_prob=0.95,
            divergence=0.5,
            history_titles=["<b>bold</b> history & more"],
        ),
    ]


def _report_kwargs(plots: dict[str, Path] | None = None) -> dict:
    """Keyword arguments of a full report."""
    return {
        "title": "DIFFMASK report <test>",
        "settings": {"method": "diffmask", "epochs": 3, "margin": 0.05, "note": "<i>x</i>"},
        "summary": {"mean_l0": 0.3712, "mean_divergence": 0.0123, "n_samples": 5},
        "samples": _samples(),
        "top_words": [
            {
                "word": "budget",
                "kept_share_lcb": 0.6214,
                "kept_share": 0.91,
                "kept_count": 11,
                "count": 12,
                "mean_score": 0.6543,
            },
            {
                "word": "<u>snow</u>",
                "kept_share_lcb": 0.1841,
                "kept_share": 0.5714,
                "kept_count": 4,
                "count": 7,
                "mean_score": 0.4321,
            },
        ],
        "top_words_rule": TOP_WORDS_RULE,
        "training_plots": plots,
        "comparison": [
            {"method": "diffmask", "comprehensiveness": 0.4567, "auc": "0.81 [0.78, 0.84]"},
            {"method": "integrated_gradients", "comprehensiveness": 0.3333, "auc": None},
        ],
        "comparison_plots": None,
    }


class _SpanCollector(HTMLParser):
    """Collect the attributes of word/token spans (``class`` containing ``w``)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, str | None]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record script tags and word spans."""
        data = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "span" and "w" in (data.get("class") or "").split():
            self.spans.append(data)


@pytest.fixture()
def history_plots(tmp_path: Path) -> dict[str, Path]:
    """Training-curve PNGs for the report."""
    rows = [
        {"epoch": e, "l0": 1 - 0.2 * e, "val_l0": 1 - 0.18 * e, "divergence": 0.1 / (e + 1)}
        for e in range(4)
    ]
    return plot_training_history(rows, tmp_path / "plots")


# ---------------------------------------------------------------------------------------------
# Unit tests (no browser)
# ---------------------------------------------------------------------------------------------


def test_write_report_creates_standalone_file(tmp_path: Path, history_plots) -> None:
    """The report is written atomically, embeds its plots and references nothing external."""
    out = write_report(tmp_path / "sub" / "report.html", **_report_kwargs(history_plots))
    assert out == tmp_path / "sub" / "report.html"
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text, flags=re.IGNORECASE)
    assert 'src="//' not in text and "<link" not in text and "@import" not in text
    assert text.count("data:image/png;base64,") == len(history_plots) == 2
    assert "Content-Security-Policy" in text and "default-src &#x27;none&#x27;" in text
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_csp_allows_only_the_reports_own_script_by_its_hash(tmp_path: Path) -> None:
    import base64
    import hashlib
    import html as html_lib

    text = write_report(tmp_path / "report.html", **_report_kwargs([])).read_text("utf-8")
    csp = html_lib.unescape(re.search(r'Content-Security-Policy" content="([^"]*)"', text)[1])
    script_src = re.search(r"script-src ([^;]*);", csp)[1]
    assert "unsafe-inline" not in script_src
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode("utf-8")).digest()).decode()
    assert script_src == f"'sha256-{digest}'"


def test_untrusted_text_is_escaped(tmp_path: Path) -> None:
    """Hostile titles, history, settings and table cells appear only escaped."""
    text = write_report(tmp_path / "r.html", **_report_kwargs()).read_text(encoding="utf-8")
    assert ALERT_TITLE not in text and PWN_SCRIPT_TITLE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img" not in text and "&lt;img" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt; history &amp; more" in text
    assert "<i>x</i>" not in text and "<u>snow</u>" not in text
    assert "DIFFMASK report &lt;test&gt;" in text
    parser = _SpanCollector()
    parser.feed(text)
    assert parser.scripts == 1


def test_numbers_and_tables(tmp_path: Path) -> None:
    """Probabilities, metrics and comparison cells appear formatted."""
    text = write_report(tmp_path / "r.html", **_report_kwargs()).read_text(encoding="utf-8")
    for expected in ("0.8123", "0.7911", "0.2718", "0.3712", "0.6543", "0.9100", "0.6214"):
        assert expected in text
    assert "0.81 [0.78, 0.84]" in text and "0.4567" in text
    assert "Method comparison" in text and "integrated_gradients" in text
    columns = ("word", "kept_share_lcb", "kept_share", "kept_count", "count", "mean_score")
    positions = [text.index(f">{column}</th>") for column in columns]
    assert positions == sorted(positions)
    assert '<td class="num">11</td><td class="num">12</td>' in text


def test_word_spans_carry_scores_and_gold(tmp_path: Path) -> None:
    """Every word span has its exact score in ``data-score`` and ``title``; gold words marked."""
    parser = _SpanCollector()
    parser.feed(render_report(**_report_kwargs()))
    budget = [s for s in parser.spans if (s.get("title") or "").startswith("budget:")]
    assert budget and "gold" in budget[0]["class"].split()
    assert budget[0]["data-score"] == "0.5" and "0.5" in budget[0]["title"]
    negative = [s for s in parser.spans if s.get("data-score") == "-0.5"]
    assert negative and "rgb(" in negative[0]["style"]
    senate = [s for s in parser.spans if (s.get("title") or "").startswith("Senate:")]
    assert "gold" in senate[0]["class"].split()
    assert all(s.get("data-score") is not None for s in parser.spans)


def test_optional_sections_and_missing_values(tmp_path: Path) -> None:
    """Without comparison data there is no comparison section; missing values show a dash."""
    kwargs = _report_kwargs()
    kwargs.update(comparison=None, comparison_plots=None, training_plots=None)
    text = render_report(**kwargs)
    assert "Method comparison" not in text and 'href="#comparison"' not in text
    assert "No plots." in text and "—" in text


def test_plots_are_deterministic(tmp_path: Path) -> None:
    """Plotting the same data twice gives byte-identical PNGs; absent metrics get no file."""
    rows = [{"step": s, "lambda": 0.01 * 10**s, "within_margin": s / 4} for s in range(5)]
    first = plot_training_history(rows, tmp_path / "a")
    second = plot_training_history(rows, tmp_path / "b")
    assert sorted(first) == ["lambda", "within_margin"]
    for key, path in first.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.read_bytes() == second[key].read_bytes()
    curves = {"diffmask": ([0, 0.5, 1], [0.9, 0.4, 0.1]), "random": ([0, 0.5, 1], [0.9, 0.7, 0.5])}
    c1 = plot_curves(curves, "Deletion", "p(click)", tmp_path / "c1.png")
    c2 = plot_curves(curves, "Deletion", "p(click)", tmp_path / "c2.png")
    assert c1.read_bytes() == c2.read_bytes()
    assert plot_curves({}, "Empty", "p", tmp_path / "empty.png").exists()


def _rgb(style: str) -> tuple[int, int, int]:
    """The background colour of an inline ``style`` attribute."""
    match = re.search(r"background:rgb\((\d+),(\d+),(\d+)\)", style)
    assert match, style
    return tuple(int(c) for c in match.groups())


def _probability_samples() -> list[dict]:
    """DIFFMASK-like samples: one with nothing kept (all 0.0036), one with a kept word."""
    return [
        _sample(
            0, "Nothing kept in this title", word_scores=[0.0036] * 5, token_scores=[0.0036] * 5
        ),
        _sample(
            1, "One kept word here", word_scores=[1.0, 0.0036, 0.5, 0.0], token_scores=[], tokens=[]
        ),
    ]


def _spans_of(text: str, news_id: str) -> list[dict[str, str | None]]:
    """Word/token spans of the sample card with ``news_id``."""
    card = text.split(f"news <code>{news_id}</code>", 1)[1].split("</article>", 1)[0]
    parser = _SpanCollector()
    parser.feed(card)
    return parser.spans


def test_probabilities_default_to_absolute_scale() -> None:
    """Scores all in [0, 1] use the absolute scale: a 0.0036-only sample stays nearly white."""
    samples = _probability_samples()
    assert resolve_score_scale(samples, None) == "absolute"
    text = render_report(**{**_report_kwargs(), "samples": samples})
    assert "probability that the word is kept, absolute scale 0–1" in text
    assert "normalised per sample" not in text
    faint = _spans_of(text, "N200")
    assert len(faint) == 10  # five words and five tokens
    for span in faint:
        assert all(channel >= 250 for channel in _rgb(span["style"])), span["style"]
    kept = {s["data-score"]: _rgb(s["style"]) for s in _spans_of(text, "N201")}
    assert kept["1.0"] == (202, 0, 32)
    assert kept["0.0"] == (255, 255, 255)
    assert kept["0.5"] == (round(255 + (202 - 255) * 0.5), 128, round(255 + (32 - 255) * 0.5))
    assert "colour scale: absolute 0–1, max score 0.0036" in text


def test_signed_scores_use_per_sample_scale() -> None:
    """A negative score selects the per-sample scale: each sample's max |score| is full colour."""
    samples = [
        _sample(0, "Storm hits coast", word_scores=[0.02, -0.04, 0.01], token_scores=[], tokens=[]),
        _sample(1, "Calm day", word_scores=[3.0, 1.5], token_scores=[], tokens=[]),
    ]
    assert resolve_score_scale(samples, None) == "per_sample"
    text = render_report(**{**_report_kwargs(), "samples": samples})
    assert "normalised per sample by its largest |score|" in text
    assert "absolute scale 0–1" not in text
    signed = {s["data-score"]: _rgb(s["style"]) for s in _spans_of(text, "N200")}
    assert signed["-0.04"] == (5, 113, 176)
    assert signed["0.02"] == (round(255 + (202 - 255) * 0.5), 128, round(255 + (32 - 255) * 0.5))
    big = {s["data-score"]: _rgb(s["style"]) for s in _spans_of(text, "N201")}
    assert big["3.0"] == (202, 0, 32)
    assert "colour scale: diverging (red +, blue −), normalised by |score| max 0.0400" in text


def test_explicit_score_scale_overrides_default() -> None:
    """Probabilities can be forced onto the per-sample scale; unknown scales are rejected."""
    samples = _probability_samples()
    text = render_report(**{**_report_kwargs(), "samples": samples, "score_scale": "per_sample"})
    assert "normalised per sample by its largest |score|" in text
    faint = _spans_of(text, "N200")
    assert all(_rgb(s["style"]) == (202, 0, 32) for s in faint)
    with pytest.raises(ValueError, match="score_scale"):
        render_report(**{**_report_kwargs(), "score_scale": "log"})


def test_top_words_rule_is_shown_and_escaped() -> None:
    """The ranking rule appears above the top-words table, HTML-escaped."""
    text = render_report(**_report_kwargs())
    assert "Words seen at least 5 times" in text and "score &gt;= 0.5" in text
    assert text.index("Words seen at least 5 times") < text.index(">kept_share_lcb</th>")
    hostile = render_report(**{**_report_kwargs(), "top_words_rule": "<b>rule</b> & more"})
    assert "<b>rule</b>" not in hostile and "&lt;b&gt;rule&lt;/b&gt; &amp; more" in hostile
    assert 'class="rule' not in render_report(**{**_report_kwargs(), "top_words_rule": None})


# ---------------------------------------------------------------------------------------------
# Browser test (headless Debian Chromium)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium WebDriver, skipped when Chromium or chromedriver is missing."""
    browser = start_chromium(tmp_path_factory.mktemp("chromium-profile"), browser_logs=True)
    try:
        yield browser
    finally:
        browser.quit()


def _visible_news_ids(browser) -> list[str]:
    """News ids of the displayed sample cards, in page order."""
    from selenium.webdriver.common.by import By

    cards = browser.find_elements(By.CSS_SELECTOR, "article.sample")
    return [
        c.find_element(By.CSS_SELECTOR, ".ids").text.split("news ")[-1]
        for c in cards
        if c.is_displayed()
    ]


def _select(browser, element_id: str, value: str) -> None:
    """Choose an option of a ``<select>`` by value."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, element_id)).select_by_value(value)


def _save_full_page_screenshot(browser) -> None:
    """Resize the window to the page height and save a screenshot under ``output/``."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 40, 8000))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))


@pytest.mark.slow
def test_report_in_headless_chromium(driver, tmp_path: Path, history_plots) -> None:
    """The report renders, hostile titles stay inert text, and filter/sort work."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    path = write_report(tmp_path / "report.html", **_report_kwargs(history_plots))
    driver.get(path.as_uri())
    body = driver.find_element(By.TAG_NAME, "body").text
    for expected in (
        "DIFFMASK report <test>",
        "Senate passes budget deal after marathon session",
        "Storm brings heavy snow to Denver",
        "History headline 0-1",
        "<u>snow</u>",
        "0.6543",
        "Words seen at least 5 times",
        "normalised per sample by its largest |score|",
        "diffmask",
        "<i>x</i>",
        "0.81 [0.78, 0.84]",
        "showing 5 of 5 samples",
    ):
        assert expected in body
    heat = driver.find_elements(By.CSS_SELECTOR, "p.title-heat")
    assert ALERT_TITLE in [h.text for h in heat] and PWN_IMG_TITLE in [h.text for h in heat]
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert driver.execute_script("return window.__pwned") is None
    images = driver.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 2 and all(
        driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images
    )
    logs = " ".join(e.get("message", "") for e in driver.get_log("browser"))
    assert "Content Security Policy" not in logs

    _save_full_page_screenshot(driver)

    box = driver.find_element(By.ID, "sample-filter")
    box.send_keys("budget")
    assert _visible_news_ids(driver) == ["N200"]
    assert "showing 1 of 5 samples" in driver.find_element(By.ID, "sample-count").text
    box.clear()
    box.send_keys("u101")
    assert _visible_news_ids(driver) == ["N201"]
    box.clear()
    box.send_keys(" ")
    assert len(_visible_news_ids(driver)) == 5

    _select(driver, "sample-sort", "div")
    assert _visible_news_ids(driver) == ["N204", "N201", "N202", "N200", "N203"]
    _select(driver, "sample-dir", "asc")
    assert _visible_news_ids(driver) == ["N200", "N202", "N201", "N204", "N203"]
    _select(driver, "sample-sort", "orig")
    assert _visible_news_ids(driver) == ["N203", "N201", "N202", "N200", "N204"]
    _select(driver, "sample-sort", "index")
    assert _visible_news_ids(driver) == ["N200", "N201", "N202", "N203", "N204"]
