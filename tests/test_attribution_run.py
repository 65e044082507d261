"""AttributionRun: one object for a run's results, with a JSONL round trip, the report's rows,
the word tables and the summary metrics on hand-computed values."""

from __future__ import annotations

import pytest

from attribution_analysis.evaluation.attribution_run import AttributionRun
from attribution_analysis.methods.result import AttributionResult


def _result(i: int, scores: list[float], divergence: float, masked: float) -> AttributionResult:
    tokens = ["[CLS]", "good", "news", "today", "[SEP]"]
    return AttributionResult(
        method="diffmask",
        tokens=tokens,
        token_scores=[0.0, *scores, 0.0],
        words=["good", "news", "today"],
        word_scores=list(scores),
        word_token_index=[[1], [2], [3]],
        original_output=0.8,
        masked_output=masked,
        divergence=divergence,
        ids={"impression_id": f"I{i}", "user_id": "U1", "news_id": f"N{i}", "label": "1"},
        metadata={"method": "diffmask"},
        annotations={"title": "Good news today", "gold_words": ["news"], "history_titles": []},
    )


@pytest.fixture
def run() -> AttributionRun:
    return AttributionRun(
        [
            _result(0, [0.1, 0.9, 0.2], divergence=0.05, masked=0.7),  # within 0.1, same side
            _result(1, [0.6, 0.3, 0.0], divergence=0.30, masked=0.4),  # outside, flips
        ]
    )


def test_jsonl_round_trip_keeps_every_field(run, tmp_path):
    path = run.save(tmp_path / "attributions.jsonl")
    back = AttributionRun.load(path)
    assert [r.to_dict() for r in back.results] == [r.to_dict() for r in run.results]


def test_rows_carry_what_the_report_shows(run):
    row = run.rows()[0]
    assert row["title"] == "Good news today" and row["gold_words"] == ["news"]
    assert row["original_prob"] == 0.8 and row["masked_prob"] == 0.7
    assert row["impression_id"] == "I0" and row["method"] == "diffmask"


def test_top_words_per_sample_ranks_by_score(run):
    rows = run.top_words_per_sample(2)
    assert [(r["news_id"], r["rank"], r["word"]) for r in rows] == [
        ("N0", 1, "news"),
        ("N0", 2, "today"),
        ("N1", 1, "good"),
        ("N1", 2, "news"),
    ]


def test_evaluate_on_hand_computed_values(run):
    def gold(result):
        return [0, 0, 1, 0, 0]  # "news" is the rationale

    summary = run.evaluate(margin=0.1, gold_labels=gold)
    assert summary["n_samples"] == 2
    assert summary["within_margin_share"] == 0.5
    assert summary["agreement_share"] == 0.5  # 0.4 < 0.5 flips the second decision
    assert summary["satisfied_share"] == 0.5
    assert summary["mean_divergence"] == pytest.approx(0.175)
    assert summary["kept_share"] == pytest.approx((0.1 + 0.9 + 0.2 + 0.6 + 0.3 + 0.0) / 6)
    assert summary["kept_share_thresholded"] == pytest.approx(2 / 6)
    assert "auprc" in summary
    assert "auprc" not in run.evaluate(margin=0.1)  # no gold labels, no plausibility
    assert AttributionRun([]).evaluate(0.1) == {"n_samples": 0, "n_unscorable": 0}


def test_titles_without_scorable_tokens_are_left_out_of_the_metrics(run):
    empty = _result(2, [], divergence=0.0, masked=0.8)
    empty.words, empty.word_scores, empty.word_token_index = [], [], []
    summary = AttributionRun([*run.results, empty]).evaluate(margin=0.1)
    assert summary["n_samples"] == 2 and summary["n_unscorable"] == 1
    assert summary["within_margin_share"] == 0.5
