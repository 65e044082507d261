"""Load a MIND-format data set as the config describes: news of every split, impressions of the
train and dev splits, the token table, and (when present) gold rationales."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from attribution_analysis.config import DataConfig, resolve_path
from attribution_analysis.data.mind import (
    DataError,
    Impression,
    NewsRecord,
    ReadStats,
    read_behaviors,
    read_news,
    split_news_paths,
)
from attribution_analysis.data.tokenization import TokenTable, build_token_table


@dataclass
class MindData:
    """Everything the recommender and the attribution methods read."""

    news: dict[str, NewsRecord]
    table: TokenTable
    train: list[Impression]
    dev: list[Impression]
    stats: ReadStats
    rationales: dict[str, list[str]] = field(default_factory=dict)

    def split(self, name: str) -> list[Impression]:
        if name not in ("train", "dev"):
            raise ValueError(f"split must be 'train' or 'dev', got {name!r}")
        return self.train if name == "train" else self.dev


def read_rationales(path: str | Path) -> dict[str, list[str]]:
    """Read ``rationales.jsonl``: ``{"news_id": ..., "words": [...]}`` per line."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["news_id"])] = [str(w) for w in row["words"]]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: bad rationale row ({exc})") from None
    return out


def ensure_synthetic(config: DataConfig) -> None:
    """Generate the synthetic corpus into the configured folders when they hold no data and
    ``generate_synthetic_if_missing`` allows it (said on screen): ``null`` (default) into the
    default folder only (elsewhere a missing file is an error: a mistyped path must not get a
    corpus), ``true`` anywhere, ``false`` never. An explicit step of the
    commands, never a side effect of :func:`load_mind_data`. With ``synthetic_variant:
    poisoned`` the folders' parent is the poisoned variant (:mod:`.poisoning`), written beside
    its clean corpus (``../clean``, generated too when missing)."""
    train = resolve_path(config.train_dir)
    allowed = config.generate_synthetic_if_missing
    if (train / "behaviors.tsv").is_file() or allowed is False:
        return
    default = resolve_path(DataConfig().train_dir)
    if allowed is None and train != default:  # a mistyped path must not get a corpus
        raise DataError(
            f"{train / 'behaviors.tsv'} not found. The synthetic corpus is generated only into "
            f"the default folder ({default.parent}) unless the config asks for it elsewhere "
            "with data.generate_synthetic_if_missing: true"
        )
    from attribution_analysis.data.synthetic import SyntheticConfig, generate_corpus

    out = train.parent
    if resolve_path(config.dev_dir).parent != out:
        raise DataError(f"{train}: not found, and dev_dir is not beside it to generate into")
    synthetic = SyntheticConfig(seed=config.synthetic_seed)
    if config.synthetic_variant == "clean":
        print(f"[data] {train} not found: generating the synthetic corpus into {out}")
        generate_corpus(out, synthetic)
        return
    from attribution_analysis.data.poisoning import poison_corpus

    clean = out.parent / "clean"
    if not (clean / "meta.json").is_file():
        print(f"[data] generating the clean synthetic corpus into {clean}")
        generate_corpus(clean, synthetic)
    print(f"[data] {train} not found: writing the poisoned variant of {clean} into {out}")
    poison_corpus(clean, out, config.synthetic_seed)


def load_mind_data(config: DataConfig, tokenizer) -> MindData:
    """Read both splits (and ``extra_news_dirs``) and build the cached token table. Only
    reads: missing files are an error (see :func:`ensure_synthetic`)."""
    stats = ReadStats()
    dirs = [resolve_path(d) for d in (config.train_dir, config.dev_dir, *config.extra_news_dirs)]
    news = read_news(split_news_paths(dirs), strict=config.strict, stats=stats)
    train = read_behaviors(dirs[0] / "behaviors.tsv", news, config.strict, stats)
    dev = read_behaviors(dirs[1] / "behaviors.tsv", news, config.strict, stats)
    table = build_token_table(
        news, tokenizer, config.max_title_len, resolve_path(config.cache_dir) / "tokens"
    )
    rationales = {}
    if config.rationales and resolve_path(config.rationales).is_file():
        rationales = read_rationales(resolve_path(config.rationales))
    return MindData(news, table, train, dev, stats, rationales)
