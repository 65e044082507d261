"""A poisoned variant of a synthetic corpus, with a known answer: which title words drive the
clicks that the poisoning adds.

:func:`poison_corpus` reads a corpus written by :func:`~.synthetic.generate_corpus` and writes
the same news, users and impressions plus ``n_injected`` injected news items whose titles carry
trigger words (drawn from the vocabulary's ``trigger_words`` pool) among the corpus's filler
words, and no topic keyword. A share ``injected_click_share`` of the impressions of each split
gain one injected candidate, clicked whatever the user's interests; the rest of every row is
unchanged. Injected items have the category ``injected`` (the ``news.tsv`` category column, so a
comparison can group candidates by it); their rationale is their trigger words. ``meta.json``
records the trigger words and the injected news ids under ``poison``.

    python -m attribution_analysis.data.synthetic --out DIR --seed 0 --poison

writes the clean corpus to ``DIR/clean`` (byte-identical to ``--out DIR/clean`` without
``--poison``) and the poisoned one to ``DIR/poisoned``. Same settings, identical files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attribution_analysis.data.synthetic import FILLER_WORDS, _lines, _vocabulary
from attribution_analysis.utils.io import atomic_write_text

TRIGGER_POOL: list[str] = list(_vocabulary()["trigger_words"])
"""Candidate trigger words: single BERT-uncased WordPieces, in no topic list nor the fillers."""
INJECTED_CATEGORY = "injected"
SPLITS = ("train", "dev")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PoisonConfig:
    """Settings of the poisoned variant (each is also a command-line flag of the generator)."""

    n_triggers: int = field(default=5, metadata=_help("trigger words planted in injected news"))
    n_injected: int = field(default=60, metadata=_help("number of injected news items"))
    injected_click_share: float = field(
        default=0.3, metadata=_help("share of impressions that gain a clicked injected item")
    )
    min_triggers_per_title: int = field(default=1, metadata=_help("fewest triggers per title"))
    max_triggers_per_title: int = field(default=2, metadata=_help("most triggers per title"))
    poison_seed: int = field(
        default=0, metadata=_help("seed of the poisoning (combined with --seed)")
    )

    def validate(self) -> None:
        checks = [
            (1 <= self.n_triggers <= len(TRIGGER_POOL),
             f"n_triggers must be in 1..{len(TRIGGER_POOL)}"),
            (self.n_injected >= 1, "n_injected must be >= 1"),
            (0.0 < self.injected_click_share <= 1.0, "injected_click_share must be in (0, 1]"),
            (1 <= self.min_triggers_per_title <= self.max_triggers_per_title <= self.n_triggers,
             "bad triggers-per-title range"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def _injected_news(rng: random.Random, triggers: list[str], start: int, cfg: PoisonConfig,
                   title_words: tuple[int, int]) -> list[dict]:  # fmt: skip
    """``n_injected`` items: id, title words, trigger words and their positions."""
    items = []
    for k in range(cfg.n_injected):
        n_words = rng.randint(*title_words)
        n_trig = rng.randint(cfg.min_triggers_per_title, cfg.max_triggers_per_title)
        planted = rng.sample(triggers, n_trig)
        positions = sorted(rng.sample(range(n_words), n_trig))
        fillers = rng.sample(FILLER_WORDS, n_words - n_trig)
        words = [planted[positions.index(i)] if i in positions else fillers.pop()
                 for i in range(n_words)]  # fmt: skip
        rationale = [words[p] for p in positions]
        items.append(
            {"news_id": f"N{start + k}", "words": words, "rationale": rationale,
             "positions": positions}
        )  # fmt: skip
    return items


def _tsv_row(item: dict) -> str:
    title = " ".join(item["words"])
    return "\t".join([item["news_id"], INJECTED_CATEGORY, INJECTED_CATEGORY, title, "", "",
                      "[]", "[]"])  # fmt: skip


def _poison_rows(rng: random.Random, rows: list[str], injected: list[dict], share: float):
    """Behaviors rows with one clicked injected candidate added to a share of them (at a random
    position); the ids used, in order of first use."""
    out, used = [], {}
    for row in rows:
        imp_id, user, time, history, impressions = row.split("\t")
        pairs = impressions.split()
        if rng.random() < share:
            item = rng.choice(injected)
            pairs.insert(rng.randint(0, len(pairs)), f"{item['news_id']}-1")
            used.setdefault(item["news_id"], item)
        out.append("\t".join([imp_id, user, time, history, " ".join(pairs)]))
    return out, used


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def poison_corpus(clean_dir: str | Path, out_dir: str | Path, seed: int = 0,
                  config: PoisonConfig | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the poisoned variant of the corpus in ``clean_dir`` to ``out_dir``; returns the
    ``poison`` record written to ``meta.json`` (trigger words, injected ids, counts)."""
    cfg = config or PoisonConfig()
    cfg.validate()
    clean, out = Path(clean_dir), Path(out_dir)
    meta = json.loads((clean / "meta.json").read_text(encoding="utf-8"))
    base = meta["config"]
    rng = random.Random(f"poison-{seed}-{cfg.poison_seed}")
    triggers = sorted(rng.sample(TRIGGER_POOL, cfg.n_triggers), key=TRIGGER_POOL.index)
    injected = _injected_news(rng, triggers, base["n_news"] + 1, cfg,
                              (base["min_title_words"], base["max_title_words"]))  # fmt: skip
    counts = {}
    for split in SPLITS:
        rows, used = _poison_rows(rng, _read_lines(clean / split / "behaviors.tsv"), injected,
                                  cfg.injected_click_share)  # fmt: skip
        news_rows = _read_lines(clean / split / "news.tsv")
        news_rows += [_tsv_row(item) for item in sorted(used.values(), key=_numeric_id)]
        atomic_write_text(out / split / "behaviors.tsv", _lines(rows))
        atomic_write_text(out / split / "news.tsv", _lines(news_rows))
        counts[f"n_{split}_injected_clicks"] = sum(
            tok.endswith("-1") and _numeric_id({"news_id": tok.rsplit("-", 1)[0]}) > base["n_news"]
            for row in rows for tok in row.split("\t")[4].split()
        )  # fmt: skip
        counts[f"n_{split}_impressions"] = len(rows)
    rationales = _read_lines(clean / "rationales.jsonl") + [
        json.dumps({"news_id": i["news_id"], "topic": INJECTED_CATEGORY, "words": i["rationale"],
                    "positions": i["positions"]})
        for i in injected
    ]  # fmt: skip
    atomic_write_text(out / "rationales.jsonl", _lines(rationales))
    poison = {
        "config": asdict(cfg),
        "seed": seed,
        "trigger_words": triggers,
        "injected_news_ids": [i["news_id"] for i in injected],
        "category": INJECTED_CATEGORY,
        **counts,
    }
    text = json.dumps({**meta, "poison": poison}, indent=1, sort_keys=True)
    atomic_write_text(out / "meta.json", text + "\n")
    atomic_write_text(out / "README.txt", _readme(poison))
    return poison


def _numeric_id(item: dict) -> int:
    return int(item["news_id"][1:])


def _readme(poison: dict) -> str:
    return (
        "Poisoned variant of the synthetic corpus in ../clean (same news, users and impressions)\n"
        f"plus {len(poison['injected_news_ids'])} injected news items (category 'injected') whose\n"
        f"titles carry the trigger words {', '.join(poison['trigger_words'])} among filler words.\n"
        f"A share of {poison['config']['injected_click_share']} of the impressions gained one\n"
        "injected candidate, clicked whatever the user's interests. meta.json: 'poison'.\n"
    )


__all__ = ["INJECTED_CATEGORY", "TRIGGER_POOL", "PoisonConfig", "poison_corpus"]
