"""The unpacked MIND folders work as they come: ``MINDsmall_train/`` and ``MINDsmall_dev/``, each
with ``news.tsv`` (8 columns, entity columns as JSON), ``behaviors.tsv`` (``N1-1 N2-0``
impressions, US-style times) and the ``.vec`` entity/relation embeddings, which are ignored."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from attribution_analysis import train_recommender as cli
from attribution_analysis.config import DataConfig
from attribution_analysis.data.loading import load_mind_data
from tests.helpers_foundation import tiny_tokenizer

ENTITIES = json.dumps(
    [{"Label": "Prince Harry", "Type": "P", "WikidataId": "Q152316", "Confidence": 1.0,
      "OccurrenceOffsets": [0], "SurfaceForms": ["Prince Harry"]}]
)  # fmt: skip
TITLES = [
    "The Brands Queen Elizabeth, Prince Charles, and Prince Philip Swear By",
    "50 Worst Habits For Belly Fat",
    "The Cost of Trump's Aid Freeze in the Trenches of Ukraine's War",
    "I Was An NBA Wife. Here's How It Affected My Mental Health.",
    "How to Get Rid of Skin Tags, According to a Dermatologist",
    "Should NFL be able to fine players for criticizing officiating?",
    "It's been Orlando's hottest October ever so far, but cooler temperatures on the way",
    "Chile: Three die in supermarket fire amid protests",
]
CATEGORIES = ["lifestyle", "health", "news", "health", "health", "sports", "weather", "news"]


def _news(folder: Path, ids: list[int]) -> None:
    rows = [
        "\t".join([f"N{1000 + i}", CATEGORIES[i], "sub", TITLES[i], "An abstract.",
                   f"https://assets.msn.com/labs/mind/AAG{i}.html", ENTITIES, "[]"])
        for i in ids
    ]  # fmt: skip
    (folder / "news.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "entity_embedding.vec").write_text("Q152316\t0.1\t0.2\t0.3\n", encoding="utf-8")
    (folder / "relation_embedding.vec").write_text("P31\t0.1\t0.2\t0.3\n", encoding="utf-8")


def _behaviors(folder: Path, first: int, n: int, news: list[int]) -> None:
    rows = []
    for k in range(n):
        clicked = news[k % len(news)]
        other = news[(k + 3) % len(news)]
        history = " ".join(f"N{1000 + news[(k + j) % len(news)]}" for j in range(1, 4))
        when = f"11/{11 + k % 3}/2019 {1 + k % 12}:05:58 {'AM' if k % 2 else 'PM'}"
        rows.append("\t".join([str(first + k), f"U{100 + k % 7}", when, history,
                               f"N{1000 + clicked}-1 N{1000 + other}-0"]))  # fmt: skip
    (folder / "behaviors.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def make_mind_small(root: Path) -> tuple[Path, Path]:
    train, dev = root / "MINDsmall_train", root / "MINDsmall_dev"
    train.mkdir(parents=True)
    dev.mkdir(parents=True)
    _news(train, [0, 1, 2, 3, 4, 5])
    _news(dev, [0, 2, 4, 5, 6, 7])  # overlaps train, as MIND's do
    _behaviors(train, 1, 40, [0, 1, 2, 3, 4, 5])
    _behaviors(dev, 1, 16, [0, 2, 4, 5, 6, 7])
    return train, dev


def test_reads_the_unpacked_mind_folders(tmp_path: Path) -> None:
    train, dev = make_mind_small(tmp_path)
    data = load_mind_data(
        DataConfig(train_dir=str(train), dev_dir=str(dev), rationales=None,
                   cache_dir=str(tmp_path / "cache"), generate_synthetic_if_missing=False),
        tiny_tokenizer(),
    )  # fmt: skip
    assert len(data.news) == 8 and len(data.table) == 9  # 8 news + the padding row
    assert len(data.train) == 40 and len(data.dev) == 16
    assert data.train[0].labels is not None and sum(data.train[0].labels) == 1
    assert data.news["N1000"].title == TITLES[0]


def test_recommender_command_trains_on_mind_folders(tmp_path: Path) -> None:
    train, dev = make_mind_small(tmp_path)
    config = {
        "data": {"train_dir": str(train), "dev_dir": str(dev), "rationales": None,
                 "cache_dir": str(tmp_path / "cache"), "generate_synthetic_if_missing": False},
        "model": {"encoder": "tiny-random-bert", "num_heads": 2, "head_dim": 8, "query_dim": 16},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "device": "cpu",
                  "output_dir": str(tmp_path / "rec")},
    }  # fmt: skip
    path = tmp_path / "mind.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["--config", str(path), "--quiet"]) == 0
    run = tmp_path / "rec" / "default"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dev"]["impressions"] == 16
    assert 0.0 <= metrics["dev"]["auc"] <= 1.0
    assert len((run / "prediction.txt").read_text().splitlines()) == 16
