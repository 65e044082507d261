"""Tests of the training/evaluation datasets and the explanation-example selection."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from attribution_analysis.data.datasets import (
    ClickSamples,
    ImpressionSet,
    collate_clicks,
    collate_impressions,
    pad_rows,
)
from attribution_analysis.data.explanation_set import select_examples
from attribution_analysis.data.mind import NewsRecord
from attribution_analysis.data.tokenization import PAD_NEWS_INDEX, build_token_table
from tests.helpers_foundation import impression, tiny_tokenizer

NEWS_IDS = [f"N{i:02d}" for i in range(1, 21)]


@pytest.fixture(scope="module")
def table():
    news = {nid: NewsRecord(nid, "c", "s", f"title number {nid}", "") for nid in NEWS_IDS}
    return build_token_table(news, tiny_tokenizer(), max_title_len=8)


def rows(table, ids):
    return tuple(table.lookup(ids))


@pytest.fixture
def impressions():
    return [
        # 2 clicks, 6 negatives
        impression(
            "1",
            ["N01", "N02", "N03", "N04", "N05"],
            ["N06", "N07", "N08", "N09", "N10", "N11", "N12", "N13"],
            [1, 0, 0, 1, 0, 0, 0, 0],
        ),
        # 1 click, only 2 negatives: drawn with replacement
        impression("2", ["N14"], ["N15", "N16", "N17"], [0, 1, 0]),
        # empty history
        impression("3", [], ["N18", "N19", "N20", "N01", "N02"], [0, 0, 1, 0, 0]),
    ]


def test_each_click_gives_positive_first_and_k_negatives(table, impressions) -> None:
    ds = ClickSamples(impressions, table, npratio=4, max_history=50, seed=0)
    assert len(ds) == 4  # one sample per click
    by_pos = {s.candidates[0]: s for s in ds}
    for imp in impressions:
        cand_rows = rows(table, imp.candidates)
        negatives = {r for r, y in zip(cand_rows, imp.labels) if y == 0}
        for r, y in zip(cand_rows, imp.labels):
            if y != 1:
                continue
            sample = by_pos[r]
            assert len(sample.candidates) == 5
            assert set(sample.candidates[1:]) <= negatives
            assert sample.history == rows(table, imp.history)
    # enough negatives: drawn without replacement
    first = by_pos[table.index["N06"]]
    assert len(set(first.candidates[1:])) == 4


def test_fewer_negatives_than_k_drawn_with_replacement(table, impressions) -> None:
    ds = ClickSamples(impressions, table, npratio=4, seed=0)
    sample = next(s for s in ds if s.candidates[0] == table.index["N16"])
    negs = sample.candidates[1:]
    assert len(negs) == 4
    assert set(negs) <= {table.index["N15"], table.index["N17"]}
    # over many epochs both negatives are drawn, and a repeat is unavoidable
    seen = Counter()
    for epoch in range(10):
        ds.set_epoch(epoch)
        s = next(s for s in ds if s.candidates[0] == table.index["N16"])
        seen.update(s.candidates[1:])
    assert set(seen) == {table.index["N15"], table.index["N17"]}


def test_history_keeps_last_h(table, impressions) -> None:
    ds = ClickSamples(impressions, table, npratio=2, max_history=3)
    sample = next(s for s in ds if s.candidates[0] == table.index["N06"])
    assert sample.history == rows(table, ["N03", "N04", "N05"])
    ds0 = ClickSamples(impressions, table, npratio=2, max_history=0)
    assert all(s.history == () for s in ds0)
    empty = next(s for s in ds if s.candidates[0] == table.index["N20"])
    assert empty.history == ()


def test_draws_depend_only_on_seed_and_epoch(table, impressions) -> None:
    a = ClickSamples(impressions, table, npratio=4, seed=3)
    b = ClickSamples(impressions, table, npratio=4, seed=3)
    assert a.samples == b.samples
    epoch0 = list(a.samples)
    a.set_epoch(1)
    assert a.samples != epoch0
    b.set_epoch(1)
    assert a.samples == b.samples
    a.set_epoch(0)
    assert a.samples == epoch0
    c = ClickSamples(impressions, table, npratio=4, seed=4)
    assert c.samples != epoch0


def test_unlabelled_impression_cannot_train(table) -> None:
    with pytest.raises(ValueError, match="no labels"):
        ClickSamples([impression("9", [], ["N01", "N02"], None)], table)


def test_no_negatives_draws_from_table(table) -> None:
    ds = ClickSamples([impression("1", ["N01"], ["N02"], [1])], table, npratio=4)
    (sample,) = ds.samples
    assert sample.candidates[0] == table.index["N02"]
    assert all(1 <= r < len(table) for r in sample.candidates[1:])


def test_no_negatives_never_draws_the_positive(table) -> None:
    imps = [impression(str(i), [], [nid], [1]) for i, nid in enumerate(NEWS_IDS)]
    ds = ClickSamples(imps, table, npratio=4)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for s in ds:
            assert s.candidates[0] not in s.candidates[1:]


def test_collate_clicks_masks(table, impressions) -> None:
    ds = ClickSamples(impressions, table, npratio=4, max_history=50)
    samples = [ds[i] for i in range(len(ds))]
    batch = collate_clicks(samples)
    longest = max(len(s.history) for s in samples)
    assert batch["history"].shape == (len(samples), longest)
    assert batch["history_mask"].dtype == torch.bool
    for i, s in enumerate(samples):
        n = len(s.history)
        assert batch["history_mask"][i].tolist() == [True] * n + [False] * (longest - n)
        assert batch["history"][i, :n].tolist() == list(s.history)
        assert (batch["history"][i, n:] == PAD_NEWS_INDEX).all()
    assert batch["candidates"].shape == (len(samples), 5)
    assert batch["candidates"][:, 0].tolist() == [s.candidates[0] for s in samples]
    assert batch["target"].tolist() == [0] * len(samples)


def test_pad_rows_all_empty_keeps_one_slot() -> None:
    out, mask = pad_rows([(), ()])
    assert out.shape == (2, 1) and not mask.any()
    assert (out == PAD_NEWS_INDEX).all()


def test_impression_set_and_collate(table, impressions) -> None:
    unlabelled = impression("4", ["N01"], ["N02", "N03"], None)
    ds = ImpressionSet([*impressions, unlabelled], table, max_history=2)
    assert len(ds) == 4
    item = ds[0]
    assert item["index"] == 0
    assert item["history"] == rows(table, ["N04", "N05"])
    assert item["candidates"] == rows(table, impressions[0].candidates)
    assert item["labels"] == impressions[0].labels
    batch = collate_impressions([ds[i] for i in range(4)])
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["candidates"].shape == (4, 8)
    assert batch["candidate_mask"].sum(-1).tolist() == [8, 3, 5, 2]
    assert batch["history_mask"].sum(-1).tolist() == [2, 1, 0, 1]
    assert batch["candidates"][3, :2].tolist() == list(rows(table, ["N02", "N03"]))
    assert (batch["candidates"][~batch["candidate_mask"]] == PAD_NEWS_INDEX).all()
    assert batch["labels"] == [(1, 0, 0, 1, 0, 0, 0, 0), (0, 1, 0), (0, 0, 1, 0, 0), None]


def test_select_examples_deterministic_and_prefix_consistent(impressions) -> None:
    everything = select_examples(impressions, None, seed=5)
    assert len(everything) == 8 + 3 + 5
    assert {(e.impression.impression_id, e.position) for e in everything} == {
        (imp.impression_id, j) for imp in impressions for j in range(len(imp.candidates))
    }
    assert select_examples(impressions, None, seed=5) == everything
    for n in (0, 1, 4, 7, 16, 100):
        assert select_examples(impressions, n, seed=5) == everything[:n]
    assert select_examples(impressions, None, seed=6) != everything


def test_select_examples_clicked_only(impressions) -> None:
    clicked = select_examples(impressions, None, seed=0, clicked_only=True)
    assert len(clicked) == 4
    assert all(e.label == 1 for e in clicked)
    assert select_examples(impressions, 2, seed=0, clicked_only=True) == clicked[:2]
    ex = clicked[0]
    assert ex.news_id == ex.impression.candidates[ex.position]
    assert ex.ids()["label"] == "1"
    unlabelled = [impression("9", [], ["N01", "N02"], None)]
    assert select_examples(unlabelled, None, clicked_only=True) == []
    (first, _) = select_examples(unlabelled, None)
    assert first.label is None and "label" not in first.ids()
