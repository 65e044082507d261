"""The poisoned variant of the synthetic corpus: a known set of trigger words planted in
injected news that users click whatever their interests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from attribution_analysis.config import DataConfig
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.data.poisoning import TRIGGER_POOL, PoisonConfig, poison_corpus
from attribution_analysis.data.synthetic import FILLER_WORDS, TOPICS, main
from tests.helpers_foundation import tiny_tokenizer

SMALL = ["--n_news", "300", "--n_users", "120", "--n_impressions", "1500", "--seed", "3"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("poison")
    main(["--out", str(out), "--poison", *SMALL])
    return out


def test_clean_part_is_byte_identical_to_the_plain_corpus(corpus, tmp_path) -> None:
    main(["--out", str(tmp_path / "plain"), *SMALL])
    assert _digests(tmp_path / "plain") == _digests(corpus / "clean")


def test_same_settings_give_identical_files(corpus, tmp_path) -> None:
    main(["--out", str(tmp_path / "again"), "--poison", *SMALL])
    assert _digests(tmp_path / "again") == _digests(corpus)


def test_trigger_words_are_recorded_and_new_single_pieces(corpus) -> None:
    poison = json.loads((corpus / "poisoned" / "meta.json").read_text())["poison"]
    triggers = poison["trigger_words"]
    assert len(triggers) == PoisonConfig().n_triggers and set(triggers) <= set(TRIGGER_POOL)
    used = set(FILLER_WORDS) | {w for words in TOPICS.values() for w in words}
    assert not set(TRIGGER_POOL) & used
    tok = tiny_tokenizer()
    assert all(tok.tokenize(w) == [w] for w in TRIGGER_POOL)


def test_injected_news_carry_only_triggers_and_fillers_and_are_clicked(corpus) -> None:
    poisoned = corpus / "poisoned"
    poison = json.loads((poisoned / "meta.json").read_text())["poison"]
    injected, triggers = set(poison["injected_news_ids"]), set(poison["trigger_words"])
    rows = [r.split("\t") for r in (poisoned / "train" / "news.tsv").read_text().splitlines()]
    planted = [r for r in rows if r[0] in injected]
    assert planted and all(r[1] == "injected" for r in planted)
    for r in planted:
        words = r[3].split()
        assert 1 <= sum(w in triggers for w in words) <= 2
        assert all(w in triggers or w in FILLER_WORDS for w in words)
    clean_rows = (corpus / "clean" / "train" / "behaviors.tsv").read_text().splitlines()
    poisoned_rows = (poisoned / "train" / "behaviors.tsv").read_text().splitlines()
    assert len(clean_rows) == len(poisoned_rows)
    gained = 0
    for clean, dirty in zip(clean_rows, poisoned_rows):
        c, d = clean.split("\t"), dirty.split("\t")
        assert c[:4] == d[:4]  # same impression, user, time and history
        extra = [t for t in d[4].split() if t not in c[4].split()]
        assert len(extra) <= 1 and all(t.endswith("-1") and t[:-2] in injected for t in extra)
        gained += len(extra)
    share = gained / len(poisoned_rows)
    assert share == pytest.approx(PoisonConfig().injected_click_share, abs=0.05)
    assert gained == poison["n_train_injected_clicks"]


def test_poisoned_corpus_loads_and_rationales_name_the_triggers(corpus, tmp_path) -> None:
    poisoned = corpus / "poisoned"
    data = load_mind_data(
        DataConfig(train_dir=str(poisoned / "train"), dev_dir=str(poisoned / "dev"),
                   rationales=str(poisoned / "rationales.jsonl"), cache_dir=str(tmp_path)),
        tiny_tokenizer(),
    )  # fmt: skip
    poison = json.loads((poisoned / "meta.json").read_text())["poison"]
    for news_id in poison["injected_news_ids"][:10]:
        assert set(data.rationales[news_id]) <= set(poison["trigger_words"])
    assert any(n in data.news for n in poison["injected_news_ids"])


def test_bad_settings_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="n_triggers"):
        poison_corpus(tmp_path, tmp_path / "p", 0, PoisonConfig(n_triggers=0))
    with pytest.raises(ValueError, match="injected_click_share"):
        poison_corpus(tmp_path, tmp_path / "p", 0, PoisonConfig(injected_click_share=1.5))
