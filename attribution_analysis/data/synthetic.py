"""Synthetic MIND-format corpus whose click causes are known.

Every news title mixes 1-3 keywords of exactly one topic with neutral filler words. Users click
news of their interest topics (plus a controlled share of noise clicks), so the words that explain
a click are the topic keywords of the clicked title: these are written out as gold rationales.

Output layout (``out_dir``)::

    train/news.tsv, train/behaviors.tsv    MIND format, tab separated, no header
    dev/news.tsv,   dev/behaviors.tsv      dev lists news absent from train
    rationales.jsonl                       one line per news item: its topic keywords in order
    meta.json                              settings, counts, topic keywords, user interests
    README.txt                             a short description of the files

Run ``python -m attribution_analysis.data.synthetic --help`` for the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from attribution_analysis.utils.io import atomic_write_text

__all__ = [
    "FILLER_WORDS",
    "TOPICS",
    "NewsItem",
    "SyntheticConfig",
    "generate_corpus",
    "main",
]

VOCABULARY_FILE = "synthetic_vocabulary.json"
"""The corpus's word lists, a data file beside this module (a package resource)."""


def _vocabulary() -> dict[str, Any]:
    text = (
        resources.files("attribution_analysis.data")
        .joinpath(VOCABULARY_FILE)
        .read_text(encoding="utf-8")
    )
    return json.loads(text)


#: Topic name -> keywords. Keywords are lowercase, unique across topics, absent from the filler
#: pool, and single pieces of the BERT uncased WordPiece vocabulary.
TOPICS: dict[str, list[str]] = _vocabulary()["topics"]

#: Neutral words shared by every topic, so filler carries no topic signal (sorted, unique). Each
#: is a single WordPiece of the BERT uncased vocabulary.
FILLER_WORDS: list[str] = sorted(dict.fromkeys(_vocabulary()["filler_words"]))

_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _help(text: str) -> dict[str, str]:
    """Field metadata carrying the command-line help text of a config option."""
    return {"help": text}


@dataclass
class SyntheticConfig:
    """All settings of the synthetic corpus (every field is also a command-line flag)."""

    seed: int = field(default=0, metadata=_help("random seed; same seed gives identical files"))
    n_news: int = field(default=3000, metadata=_help("number of news items in the pool"))
    n_users: int = field(default=1000, metadata=_help("number of users"))
    n_impressions: int = field(default=10000, metadata=_help("impressions over train and dev"))
    n_topics: int = field(
        default=12, metadata=_help(f"number of topics used (2..{len(TOPICS)}), taken in order")
    )
    dev_fraction: float = field(default=0.2, metadata=_help("share of impressions put in dev"))
    dev_only_news_fraction: float = field(
        default=0.1, metadata=_help("share of news that only appear in dev impressions")
    )
    dev_new_user_fraction: float = field(
        default=0.1, metadata=_help("share of users that only have dev impressions")
    )
    noise_click_rate: float = field(
        default=0.05,
        metadata=_help(
            "probability that a click is on a non-interest topic; also the probability that a "
            "non-clicked candidate comes from an interest topic"
        ),
    )
    empty_history_rate: float = field(
        default=0.03, metadata=_help("share of users with an empty click history")
    )
    min_interests: int = field(default=1, metadata=_help("fewest interest topics per user"))
    max_interests: int = field(default=3, metadata=_help("most interest topics per user"))
    min_history: int = field(default=5, metadata=_help("shortest non-empty click history"))
    max_history: int = field(default=30, metadata=_help("longest click history"))
    min_candidates: int = field(default=5, metadata=_help("fewest candidates per impression"))
    max_candidates: int = field(default=20, metadata=_help("most candidates per impression"))
    min_clicks: int = field(default=1, metadata=_help("fewest clicks per impression"))
    max_clicks: int = field(default=3, metadata=_help("most clicks per impression"))
    min_title_words: int = field(default=6, metadata=_help("shortest title, in words"))
    max_title_words: int = field(default=12, metadata=_help("longest title, in words"))
    min_keywords: int = field(default=1, metadata=_help("fewest topic keywords per title"))
    max_keywords: int = field(default=3, metadata=_help("most topic keywords per title"))
    start_date: str = field(
        default="2019-11-09", metadata=_help("first day of the train period (YYYY-MM-DD)")
    )
    train_days: int = field(default=6, metadata=_help("length of the train period in days"))
    dev_days: int = field(default=1, metadata=_help("length of the dev period in days"))

    def validate(self) -> None:
        """Raise ``ValueError`` when the settings cannot produce a consistent corpus."""
        checks = [
            (2 <= self.n_topics <= len(TOPICS), f"n_topics must be in 2..{len(TOPICS)}"),
            (self.n_news >= 2 * self.n_topics, "n_news must be at least 2 * n_topics"),
            (self.n_users >= 1, "n_users must be >= 1"),
            (self.n_impressions >= 2, "n_impressions must be >= 2"),
            (0.0 < self.dev_fraction < 1.0, "dev_fraction must be in (0, 1)"),
            (0.0 <= self.dev_only_news_fraction < 0.5, "dev_only_news_fraction in [0, 0.5)"),
            (0.0 <= self.dev_new_user_fraction < 1.0, "dev_new_user_fraction in [0, 1)"),
            (0.0 <= self.noise_click_rate < 0.5, "noise_click_rate must be in [0, 0.5)"),
            (0.0 <= self.empty_history_rate < 1.0, "empty_history_rate must be in [0, 1)"),
            (1 <= self.min_interests <= self.max_interests < self.n_topics, "bad interests"),
            (1 <= self.min_history <= self.max_history, "bad history length range"),
            (1 <= self.min_clicks <= self.max_clicks, "bad click count range"),
            (self.max_clicks < self.min_candidates, "max_clicks must be < min_candidates"),
            (self.min_candidates <= self.max_candidates, "bad candidate count range"),
            (1 <= self.min_keywords <= self.max_keywords, "bad keyword count range"),
            (self.max_keywords <= self.min_title_words, "max_keywords must be <= min_title_words"),
            (self.min_title_words <= self.max_title_words, "bad title length range"),
            (
                self.max_title_words - self.min_keywords < len(FILLER_WORDS),
                "titles too long for the filler pool",
            ),
            (self.train_days >= 1 and self.dev_days >= 1, "train_days and dev_days must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        dt.date.fromisoformat(self.start_date)


@dataclass
class NewsItem:
    """One synthetic news item."""

    news_id: str
    topic: str
    words: list[str]
    rationale: list[str]
    positions: list[int]
    dev_only: bool

    @property
    def title(self) -> str:
        """The title as a space-separated string."""
        return " ".join(self.words)

    def tsv_row(self) -> str:
        """The 8-column MIND ``news.tsv`` row (no trailing newline)."""
        return "\t".join([self.news_id, self.topic, self.topic, self.title, "", "", "[]", "[]"])


@dataclass
class _User:
    """A user with interest topics and a fixed click history."""

    user_id: str
    interests: list[str]
    history: list[str]


@dataclass
class _Pools:
    """News ids grouped by split period and topic, in id order."""

    train: dict[str, list[str]]
    dev: dict[str, list[str]]


def _news_key(news_id: str) -> int:
    """Numeric sort key of an id such as ``N12`` or ``U3``."""
    return int(news_id[1:])


def _make_title(
    rng: random.Random, topic: str, cfg: SyntheticConfig
) -> tuple[list[str], list[str], list[int]]:
    """Draw a title for ``topic``: returns (words, rationale keywords, keyword positions)."""
    n_words = rng.randint(cfg.min_title_words, cfg.max_title_words)
    n_keywords = rng.randint(cfg.min_keywords, cfg.max_keywords)
    keywords = rng.sample(TOPICS[topic], n_keywords)
    positions = sorted(rng.sample(range(n_words), n_keywords))
    fillers = rng.sample(FILLER_WORDS, n_words - n_keywords)
    words: list[str] = []
    for i in range(n_words):
        words.append(keywords[positions.index(i)] if i in positions else fillers.pop())
    return words, keywords, positions


def _make_news(rng: random.Random, topics: list[str], cfg: SyntheticConfig) -> list[NewsItem]:
    """Create the news pool with balanced topics and a dev-only subset."""
    assigned = [topics[i % len(topics)] for i in range(cfg.n_news)]
    rng.shuffle(assigned)
    n_dev_only = round(cfg.dev_only_news_fraction * cfg.n_news)
    dev_only = set(rng.sample(range(cfg.n_news), n_dev_only))
    items = []
    for k, topic in enumerate(assigned):
        words, rationale, positions = _make_title(rng, topic, cfg)
        items.append(NewsItem(f"N{k + 1}", topic, words, rationale, positions, k in dev_only))
    return items


def _make_pools(news: list[NewsItem], topics: list[str]) -> _Pools:
    """Group news ids by topic: train pools hold train-period news, dev pools hold all news."""
    train: dict[str, list[str]] = {t: [] for t in topics}
    dev: dict[str, list[str]] = {t: [] for t in topics}
    for item in news:
        dev[item.topic].append(item.news_id)
        if not item.dev_only:
            train[item.topic].append(item.news_id)
    return _Pools(train=train, dev=dev)


def _pick_from_topics(
    rng: random.Random, pools: dict[str, list[str]], topics: list[str], exclude: set[str]
) -> str | None:
    """Draw a news id from a random topic of ``topics``, avoiding ``exclude`` (None if stuck)."""
    for _ in range(50):
        pool = pools[rng.choice(topics)]
        if pool:
            news_id = rng.choice(pool)
            if news_id not in exclude:
                return news_id
    return None


def _other_topics(topics: list[str], interests: list[str]) -> list[str]:
    """Topics that are not among ``interests``, in topic order."""
    return [t for t in topics if t not in interests]


def _make_users(
    rng: random.Random, topics: list[str], pools: _Pools, cfg: SyntheticConfig
) -> list[_User]:
    """Create users with 1-3 interest topics and histories drawn from train-period news."""
    n_empty = round(cfg.empty_history_rate * cfg.n_users)
    if cfg.empty_history_rate > 0:
        n_empty = max(1, n_empty)
    empty = set(rng.sample(range(cfg.n_users), min(n_empty, cfg.n_users)))
    users = []
    for k in range(cfg.n_users):
        interests = sorted(
            rng.sample(topics, rng.randint(cfg.min_interests, cfg.max_interests)),
            key=topics.index,
        )
        history: list[str] = []
        if k not in empty:
            others = _other_topics(topics, interests)
            length = rng.randint(cfg.min_history, cfg.max_history)
            seen: set[str] = set()
            for _ in range(length):
                source = others if rng.random() < cfg.noise_click_rate else interests
                news_id = _pick_from_topics(rng, pools.train, source, seen)
                if news_id is not None:
                    seen.add(news_id)
                    history.append(news_id)
        users.append(_User(f"U{k + 1}", interests, history))
    return users


def _make_candidates(
    rng: random.Random,
    user: _User,
    pools: dict[str, list[str]],
    topics: list[str],
    cfg: SyntheticConfig,
) -> list[tuple[str, int]]:
    """Draw one impression's candidates as (news id, label) pairs in display order."""
    others = _other_topics(topics, user.interests)
    exclude = set(user.history)
    n_candidates = rng.randint(cfg.min_candidates, cfg.max_candidates)
    n_clicks = rng.randint(cfg.min_clicks, cfg.max_clicks)
    pairs: list[tuple[str, int]] = []
    for slot in range(n_candidates):
        clicked = slot < n_clicks
        # A click comes from an interest topic and a skip from another topic, unless noisy.
        noisy = rng.random() < cfg.noise_click_rate
        wanted = user.interests if clicked != noisy else others
        news_id = _pick_from_topics(rng, pools, wanted, exclude)
        if news_id is None:
            continue
        exclude.add(news_id)
        pairs.append((news_id, int(clicked)))
    rng.shuffle(pairs)
    return pairs


def _split_users(
    rng: random.Random, users: list[_User], cfg: SyntheticConfig
) -> tuple[list[_User], list[_User]]:
    """Return (train users, dev users); dev users overlap train users plus some dev-only ones."""
    order = list(range(len(users)))
    rng.shuffle(order)
    n_dev_new = min(round(cfg.dev_new_user_fraction * len(users)), len(users) - 1)
    train_idx = sorted(order[n_dev_new:])
    return [users[i] for i in train_idx], users


def _times(rng: random.Random, n: int, start: dt.datetime, days: int) -> list[str]:
    """``n`` sorted MIND time strings drawn uniformly within ``days`` days from ``start``."""
    offsets = sorted(rng.randrange(days * 86400) for _ in range(n))
    return [(start + dt.timedelta(seconds=s)).strftime(_TIME_FORMAT) for s in offsets]


def _make_behaviors(
    rng: random.Random,
    users: list[_User],
    pools: dict[str, list[str]],
    topics: list[str],
    times: list[str],
    cfg: SyntheticConfig,
) -> list[str]:
    """Build ``behaviors.tsv`` rows (ids from 1, time order) for one split."""
    rows = []
    for imp_id, time in enumerate(times, start=1):
        user = rng.choice(users)
        pairs = _make_candidates(rng, user, pools, topics, cfg)
        labels = " ".join(f"{nid}-{label}" for nid, label in pairs)
        rows.append("\t".join([str(imp_id), user.user_id, time, " ".join(user.history), labels]))
    return rows


def _referenced_news(rows: list[str]) -> list[str]:
    """News ids referenced by behaviors rows (histories and candidates), sorted by id."""
    ids: set[str] = set()
    for row in rows:
        _, _, _, history, impressions = row.split("\t")
        ids.update(history.split())
        ids.update(tok.rsplit("-", 1)[0] for tok in impressions.split())
    return sorted(ids, key=_news_key)


def _count_clicks(rows: list[str]) -> int:
    """Number of clicked candidates in behaviors rows."""
    return sum(tok.endswith("-1") for row in rows for tok in row.split("\t")[4].split())


def _lines(rows: list[str]) -> str:
    """Join rows into file text with a trailing newline."""
    return "".join(row + "\n" for row in rows)


def _readme(cfg: SyntheticConfig, summary: dict[str, int]) -> str:
    """Human-readable description of the generated corpus."""
    return (
        "Synthetic MIND-format news recommendation corpus with known click causes.\n\n"
        "train/, dev/: news.tsv (8 columns: id, category, subcategory, title, abstract, url,\n"
        "  title entities, abstract entities) and behaviors.tsv (5 columns: impression id,\n"
        "  user id, time, history, candidates as NewsID-label). Each news.tsv lists every news\n"
        "  item referenced by that split; dev also holds news absent from train.\n"
        "rationales.jsonl: per news item, the topic keywords of its title in order of\n"
        "  appearance (words) and their 0-based word positions (positions).\n"
        "meta.json: settings, counts, topic keywords, filler words, user interest topics.\n\n"
        "Titles mix 1-3 keywords of one topic with shared neutral filler words. Users click\n"
        f"news of their interest topics; a share of {cfg.noise_click_rate} of clicks are noise.\n\n"
        + "".join(f"{k}: {v}\n" for k, v in summary.items())
    )


def generate_corpus(out_dir: str | Path, config: SyntheticConfig | None = None) -> dict[str, Any]:
    """Generate the corpus under ``out_dir`` and return summary counts.

    Files are written atomically; the same ``config`` (seed included) always yields byte-identical
    files.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    out = Path(out_dir)
    rng = random.Random(cfg.seed)
    topics = list(TOPICS)[: cfg.n_topics]

    news = _make_news(rng, topics, cfg)
    pools = _make_pools(news, topics)
    users = _make_users(rng, topics, pools, cfg)
    train_users, dev_users = _split_users(rng, users, cfg)

    n_dev = max(1, round(cfg.dev_fraction * cfg.n_impressions))
    n_train = cfg.n_impressions - n_dev
    start = dt.datetime.combine(dt.date.fromisoformat(cfg.start_date), dt.time())
    dev_start = start + dt.timedelta(days=cfg.train_days)
    train_rows = _make_behaviors(
        rng, train_users, pools.train, topics, _times(rng, n_train, start, cfg.train_days), cfg
    )
    dev_rows = _make_behaviors(
        rng, dev_users, pools.dev, topics, _times(rng, n_dev, dev_start, cfg.dev_days), cfg
    )

    by_id = {item.news_id: item for item in news}
    split_news = {"train": _referenced_news(train_rows), "dev": _referenced_news(dev_rows)}
    train_set = set(split_news["train"])
    summary = {
        "n_news": len(news),
        "n_train_news": len(split_news["train"]),
        "n_dev_news": len(split_news["dev"]),
        "n_dev_news_not_in_train": sum(nid not in train_set for nid in split_news["dev"]),
        "n_users": len(users),
        "n_train_users": len({r.split("\t")[1] for r in train_rows}),
        "n_dev_users": len({r.split("\t")[1] for r in dev_rows}),
        "n_empty_history_users": sum(not u.history for u in users),
        "n_train_impressions": len(train_rows),
        "n_dev_impressions": len(dev_rows),
        "n_train_clicks": _count_clicks(train_rows),
        "n_dev_clicks": _count_clicks(dev_rows),
        "n_topics": len(topics),
    }

    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        atomic_write_text(out / split / "behaviors.tsv", _lines(rows))
        atomic_write_text(
            out / split / "news.tsv", _lines([by_id[nid].tsv_row() for nid in split_news[split]])
        )
    rationales = [
        json.dumps(
            {"news_id": n.news_id, "topic": n.topic, "words": n.rationale, "positions": n.positions}
        )
        for n in news
    ]
    atomic_write_text(out / "rationales.jsonl", _lines(rationales))
    meta = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "topics": {t: TOPICS[t] for t in topics},
        "filler_words": FILLER_WORDS,
        "user_interests": {u.user_id: u.interests for u in users},
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    atomic_write_text(out / "README.txt", _readme(cfg, summary))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser with one flag per :class:`SyntheticConfig` field, ``--poison`` and
    one flag per :class:`~.poisoning.PoisonConfig` field."""
    from attribution_analysis.data.poisoning import PoisonConfig

    parser = argparse.ArgumentParser(
        prog="python -m attribution_analysis.data.synthetic",
        description="Write a synthetic MIND-format corpus with known click causes "
        "(train/, dev/, rationales.jsonl, meta.json, README.txt); with --poison, the clean "
        "corpus to OUT/clean and a poisoned variant (injected news with trigger words, clicked "
        "whatever the users' interests) to OUT/poisoned.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory")
    for f in dataclasses.fields(SyntheticConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                            help=f.metadata["help"])  # fmt: skip
    poison = parser.add_argument_group("poisoned variant")
    poison.add_argument(
        "--poison", action="store_true", help="write OUT/clean and the variant OUT/poisoned"
    )
    for f in dataclasses.fields(PoisonConfig):
        poison.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                            help=f.metadata["help"])  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: generate the corpus and print its summary as JSON."""
    from attribution_analysis.data.poisoning import PoisonConfig, poison_corpus

    args = vars(build_parser().parse_args(argv))
    out = Path(args.pop("out"))
    poison_names = [f.name for f in dataclasses.fields(PoisonConfig)]
    poison_args = {k: args.pop(k) for k in poison_names}
    if not args.pop("poison"):
        summary = generate_corpus(out, SyntheticConfig(**args))
    else:
        summary = generate_corpus(out / "clean", SyntheticConfig(**args))
        summary["poison"] = poison_corpus(
            out / "clean", out / "poisoned", args["seed"], PoisonConfig(**poison_args)
        )
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
