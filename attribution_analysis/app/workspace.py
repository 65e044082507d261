"""Application plumbing shared by the commands: load (or train) the recommender named by an
attribution config, encode the news once, and build the example loaders for training DIFFMASK,
validating it and explaining held-out impressions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from attribution_analysis.config import (
    AttributionConfig,
    RecommenderConfig,
    load_config,
    resolve_path,
)
from attribution_analysis.data.explanation_set import ExplanationSet, select_examples
from attribution_analysis.data.loading import MindData, ensure_synthetic, load_mind_data
from attribution_analysis.data.mind import DataError
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.models.nrms import NRMS
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import load_recommender
from attribution_analysis.models.training import train_recommender, write_dev_results
from attribution_analysis.utils.distributed import is_main, wait


@dataclass
class Workspace:
    """A trained recommender with its data, tokenizer and precomputed news vectors."""

    config: AttributionConfig
    recommender_config: RecommenderConfig
    model: NRMS
    tokenizer: object
    data: MindData
    news_vectors: torch.Tensor
    accelerator: Any = None
    """The ``accelerate.Accelerator`` of a multi-process run (``None``: one process)."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return is_main(self.accelerator)

    def explanation_set(self, examples) -> ExplanationSet:
        return ExplanationSet(
            examples, self.data.table, self.news_vectors, self.recommender_config.data.max_history
        )

    def loader(self, examples, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """Batches of explanation examples (shuffled by the global torch seed when asked)."""
        dataset = self.explanation_set(examples)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.config.batch_size,
            shuffle=shuffle,
            collate_fn=dataset.collate,
        )

    def title(self, news_id: str) -> str:
        return self.data.news[news_id].title

    def build_diffmask(self) -> DIFFMASK:
        """A fresh DIFFMASK with the config's settings for this recommender (its probe is
        initialised from the config's seed, whatever ran before in the process)."""
        torch.manual_seed(self.config.seed)
        return DIFFMASK.from_config(self.model, self.config.diffmask, self.tokenizer)


def recommender_config(config: AttributionConfig) -> RecommenderConfig:
    return load_config(RecommenderConfig, resolve_path(config.model_config))


def recommender_folder(config: AttributionConfig) -> tuple[Path, bool]:
    """The recommender folder and whether it holds a trained model; refuses, before any data is
    loaded, a missing one that may not or cannot be trained here."""
    path = resolve_path(config.checkpoint)
    if (path / "model.safetensors").is_file():
        return path, True
    if not config.train_recommender_if_missing:
        raise FileNotFoundError(
            f"recommender checkpoint not found: {path} (train it with python -m "
            "attribution_analysis.train_recommender, or set train_recommender_if_missing: true)"
        )
    if path.name != "best":
        raise FileNotFoundError(
            f"recommender checkpoint not found: {path}; to train it here, name a folder "
            "ending in /best"
        )
    return path, False


def train_missing_recommender(
    path: Path, rec: RecommenderConfig, data: MindData, quiet: bool, accelerator=None
) -> torch.Tensor | None:
    """Train the recommender into ``path`` (a missing ``.../best``) on ``data`` (all the
    processes of ``accelerator`` take part) and write its dev results as ``train_recommender``
    does (``metrics.json``, ``prediction.txt``). Returns the news vectors of every token-table
    row ``[rows, dim]`` from its dev evaluation (``None`` when it has none)."""
    if is_main(accelerator):
        print(f"[recommender] {path} not found: training the recommender first")  # even if quiet
    result = train_recommender(rec, data, run_dir=path.parent, quiet=quiet)
    summary = write_dev_results(rec, data, result)
    if is_main(accelerator) and not quiet:
        dev = "  ".join(f"{k}={v:.4f}" for k, v in summary["dev"].items() if isinstance(v, float))
        print(f"[recommender] dev {dev}; {path.parent / 'metrics.json'}")
    return result.news_vectors


def open_workspace(config: AttributionConfig, quiet: bool = False, accelerator=None) -> Workspace:
    """The workspace, in explicit steps, each said on screen when it does work: (1) generate
    the synthetic corpus when its folders are missing and the data config allows it; (2) load
    data and tokenizer; (3) train the recommender when its folder is missing and
    ``train_recommender_if_missing`` allows it; (4) load the recommender; (5) encode every news
    item once (shared across the processes of ``accelerator``; taken from the training's dev
    evaluation when (3) trained the model on the device it is loaded to)."""
    rec = recommender_config(config)
    if is_main(accelerator):
        ensure_synthetic(rec.data)
    wait(accelerator)
    path, trained = recommender_folder(config)
    tokenizer = load_tokenizer(rec.model)
    data = load_mind_data(rec.data, tokenizer)
    news_vectors = None
    if not trained:
        news_vectors = train_missing_recommender(path, rec, data, quiet, accelerator)
    model = load_recommender(path, rec.model)
    if accelerator is not None:
        model.to(accelerator.device)
    device = next(model.parameters()).device
    # the training's dev evaluation encoded this table with these weights; another device
    # would round differently, so vectors from one are encoded again here
    if (
        news_vectors is None
        or news_vectors.device != device
        or len(news_vectors) != len(data.table)
    ):
        news_vectors = encode_news_table(
            model, data.table, rec.train.eval_batch_size, accelerator=accelerator
        )
    return Workspace(config, rec, model, tokenizer, data, news_vectors, accelerator)


def split_examples(ws: Workspace) -> tuple[list, list, list]:
    """DIFFMASK train and validation examples (from the train split, disjoint) and the test
    examples to explain (from ``config.split``, the dev split by default)."""
    d, cfg = ws.config.diffmask, ws.config
    n_train, n_val = d.train_examples, d.val_examples
    pool = select_examples(ws.data.train, n_train + n_val, seed=cfg.seed)
    test = select_examples(ws.data.split(cfg.split), cfg.n_samples, seed=cfg.seed + 1)
    for name, examples in (("train", pool), (cfg.split, test)):
        if not examples:
            data_config = ws.recommender_config.data
            folder = data_config.train_dir if name == "train" else data_config.dev_dir
            raise DataError(
                f"{resolve_path(folder) / 'behaviors.tsv'}: no impression with a candidate: "
                f"nothing to {'train DIFFMASK on' if name == 'train' else 'explain'} "
                f"(split '{name}')"
            )
    return pool[:n_train], pool[n_train:], test


def gold_token_labels(
    words: list[str], word_token_index: list[list[int]], n_tokens: int, gold_words: list[str] | None
) -> list[int] | None:
    """0/1 per token: 1 where the token belongs to a gold-rationale word (None without gold)."""
    if not gold_words:
        return None
    gold = {w.lower() for w in gold_words}
    labels = [0] * n_tokens
    for word, index in zip(words, word_token_index):
        if word.lower() in gold:
            for i in index:
                labels[i] = 1
    return labels
