"""Tests of the title token tables and their disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attribution_analysis.data import tokenization
from attribution_analysis.data.mind import NewsRecord
from attribution_analysis.data.tokenization import PAD_NEWS_INDEX, build_token_table
from tests.helpers_foundation import tiny_tokenizer

TITLES = {
    "N3": "Stocks fall as investors fear a recession",
    "N1": "Coach praises striker",
    "N2": "new vaccine trial for cancer patients begins today in the city hospital " * 3,
}


def make_news(titles: dict[str, str]) -> dict[str, NewsRecord]:
    return {nid: NewsRecord(nid, "c", "s", title, "") for nid, title in titles.items()}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_row_zero_is_padding(tokenizer) -> None:
    table = build_token_table(make_news(TITLES), tokenizer, max_title_len=12)
    assert table.news_ids[PAD_NEWS_INDEX] == "<pad>"
    ids, mask = table.input_ids[0], table.attention_mask[0]
    assert ids[:2].tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert mask.tolist() == [1, 1] + [0] * 10
    assert (ids[2:] == tokenizer.pad_token_id).all()


def test_titles_tokenised_in_sorted_id_order(tokenizer) -> None:
    max_len = 12
    table = build_token_table(make_news(TITLES), tokenizer, max_title_len=max_len)
    assert table.news_ids == ["<pad>", "N1", "N2", "N3"]
    assert len(table) == 4
    assert table.input_ids.shape == (4, max_len) and table.attention_mask.shape == (4, max_len)
    assert table.input_ids.dtype == torch.long and table.attention_mask.dtype == torch.long
    for row, nid in enumerate(table.news_ids[1:], start=1):
        expected = tokenizer(TITLES[nid], truncation=True, max_length=max_len)["input_ids"]
        n = len(expected)
        assert table.input_ids[row, :n].tolist() == expected
        assert table.attention_mask[row].tolist() == [1] * n + [0] * (max_len - n)
        assert (table.input_ids[row, n:] == tokenizer.pad_token_id).all()
    assert table.lookup(["N3", "N1"]) == [3, 1]


def test_long_title_truncated_and_short_padded(tokenizer) -> None:
    max_len = 8
    table = build_token_table(make_news(TITLES), tokenizer, max_title_len=max_len)
    long_row = table.index["N2"]
    assert table.attention_mask[long_row].sum() == max_len
    assert table.input_ids[long_row, -1] == tokenizer.sep_token_id
    full = tokenizer(TITLES["N2"])["input_ids"]
    assert table.input_ids[long_row, : max_len - 1].tolist() == full[: max_len - 1]
    short_row = table.index["N1"]
    n_short = len(tokenizer(TITLES["N1"])["input_ids"])
    assert n_short < max_len
    assert table.attention_mask[short_row].sum() == n_short


def test_max_title_len_below_three_rejected(tokenizer) -> None:
    with pytest.raises(ValueError, match="max_title_len"):
        build_token_table(make_news(TITLES), tokenizer, max_title_len=2)


def test_lookup_unknown_id_names_it(tokenizer) -> None:
    table = build_token_table(make_news(TITLES), tokenizer, max_title_len=8)
    with pytest.raises(KeyError, match="N404"):
        table.lookup(["N1", "N404"])


def test_rows_trimmed_to_longest_title(tokenizer) -> None:
    table = build_token_table(make_news(TITLES), tokenizer, max_title_len=30)
    ids, mask = table.rows(torch.tensor([[0, 1], [1, 0]]))
    n = len(tokenizer(TITLES["N1"])["input_ids"])
    assert ids.shape == (2, 2, n) and mask.shape == (2, 2, n)
    assert mask[0, 1].all() and mask[0, 0].sum() == 2


def test_cache_second_build_reads_disk(tokenizer, tmp_path: Path, monkeypatch) -> None:
    news = make_news(TITLES)
    first = build_token_table(news, tokenizer, 10, cache_dir=tmp_path)
    files = list(tmp_path.glob("tokens_*.pt"))
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again although the cache holds the table")

    monkeypatch.setattr(tokenization, "_tokenize", refuse)
    second = build_token_table(news, tokenizer, 10, cache_dir=tmp_path)
    assert second.news_ids == first.news_ids
    assert torch.equal(second.input_ids, first.input_ids)
    assert torch.equal(second.attention_mask, first.attention_mask)
    assert second.index == first.index
    # without a cache folder it must tokenise
    with pytest.raises(AssertionError, match="tokenised again"):
        build_token_table(news, tokenizer, 10, cache_dir=None)


def test_cache_key_changes_with_title_and_length(tokenizer, tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = tokenization._tokenize

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(tokenization, "_tokenize", counting)
    news = make_news(TITLES)
    base = build_token_table(news, tokenizer, 10, cache_dir=tmp_path)
    build_token_table(news, tokenizer, 10, cache_dir=tmp_path)
    assert len(calls) == 1

    edited = make_news({**TITLES, "N1": "Coach praises goalkeeper"})
    changed = build_token_table(edited, tokenizer, 10, cache_dir=tmp_path)
    assert len(calls) == 2
    assert not torch.equal(changed.input_ids, base.input_ids)
    assert changed.input_ids[changed.index["N1"]].tolist() != base.input_ids[1].tolist()

    longer = build_token_table(news, tokenizer, 12, cache_dir=tmp_path)
    assert len(calls) == 3
    assert longer.input_ids.shape[1] == 12

    added = make_news({**TITLES, "N4": "extra"})
    build_token_table(added, tokenizer, 10, cache_dir=tmp_path)
    assert len(calls) == 4
    assert len(list(tmp_path.glob("tokens_*.pt"))) == 4

    # each variant is cached under its own key
    for variant, max_len in [(news, 10), (edited, 10), (news, 12), (added, 10)]:
        build_token_table(variant, tokenizer, max_len, cache_dir=tmp_path)
    assert len(calls) == 4


def test_cache_key_depends_on_tokenizer(tokenizer) -> None:
    news = make_news(TITLES)
    key = tokenization._cache_key(news, tokenizer, 10)
    assert key == tokenization._cache_key(dict(reversed(news.items())), tokenizer, 10)

    class Other:
        def get_vocab(self):
            return {"[PAD]": 0, "a": 1}

        all_special_tokens = ["[PAD]"]

    assert tokenization._cache_key(news, Other(), 10) != key


def test_tokenising_in_chunks_gives_the_same_table(tokenizer, monkeypatch) -> None:
    news = make_news({f"N{i}": f"title number {i} " * (i % 4 + 1) for i in range(11)})
    whole = build_token_table(news, tokenizer, max_title_len=12)
    monkeypatch.setattr(tokenization, "TOKENIZE_CHUNK", 3)
    chunked = build_token_table(news, tokenizer, max_title_len=12)
    assert chunked.news_ids == whole.news_ids
    assert torch.equal(chunked.input_ids, whole.input_ids)
    assert torch.equal(chunked.attention_mask, whole.attention_mask)


def test_special_token_strings_in_titles_stay_text(tokenizer) -> None:
    table = build_token_table(make_news({"N1": "breaking [SEP] news [MASK] today"}), tokenizer, 16)
    ids = table.input_ids[1][table.attention_mask[1].bool()].tolist()
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.sep_token_id not in ids[1:-1] and tokenizer.mask_token_id not in ids
