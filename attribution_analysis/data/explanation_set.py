"""Examples to explain: one (impression, candidate) pair each, with the candidate's tokens and the
user's history as precomputed news vectors (the recommender's context, held fixed)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from attribution_analysis.data.datasets import pad_rows
from attribution_analysis.data.mind import Impression
from attribution_analysis.data.tokenization import TokenTable


@dataclass(frozen=True)
class ExplanationExample:
    """The candidate at ``position`` of ``impression``."""

    impression: Impression
    position: int

    @property
    def news_id(self) -> str:
        return self.impression.candidates[self.position]

    @property
    def label(self) -> int | None:
        labels = self.impression.labels
        return None if labels is None else labels[self.position]

    def ids(self) -> dict[str, str]:
        out = {
            "impression_id": self.impression.impression_id,
            "user_id": self.impression.user_id,
            "news_id": self.news_id,
        }
        if self.label is not None:
            out["label"] = str(self.label)
        return out


def select_examples(
    impressions: Sequence[Impression],
    n: int | None,
    seed: int = 0,
    clicked_only: bool = False,
) -> list[ExplanationExample]:
    """Up to ``n`` (impression, candidate) pairs, drawn deterministically from ``seed``.

    Every candidate of every impression is eligible (only clicked ones with ``clicked_only``);
    the draw is a seeded shuffle, so the first ``n`` of a larger draw equal a smaller draw.
    """
    pool = [
        ExplanationExample(imp, j)
        for imp in impressions
        for j in range(len(imp.candidates))
        if not clicked_only or (imp.labels is not None and imp.labels[j] == 1)
    ]
    random.Random(seed).shuffle(pool)
    return pool if n is None else pool[:n]


class ExplanationSet(Dataset):
    """Tensors for explaining candidates with their users' histories.

    Items: ``input_ids``/``attention_mask`` ``[tokens]`` of the candidate, ``history`` rows and
    ``others`` rows (the impression's other candidates); ``collate`` turns rows into vectors.
    """

    def __init__(
        self,
        examples: Sequence[ExplanationExample],
        table: TokenTable,
        news_vectors: torch.Tensor,
        max_history: int = 50,
    ) -> None:
        self.examples = list(examples)
        self.table = table
        self.news_vectors = news_vectors.detach().cpu()
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        imp = ex.impression
        row = self.table.index[ex.news_id]
        history = imp.history[-self.max_history :] if self.max_history > 0 else ()
        others = [c for j, c in enumerate(imp.candidates) if j != ex.position]
        return {
            "row": row,
            "history": self.table.lookup(history),
            "others": self.table.lookup(others),
            "meta": ex.ids(),
            "index": i,
        }

    def collate(self, items: Sequence[dict]) -> dict:
        """Batch: ``input_ids``/``attention_mask`` ``[batch, tokens]`` (trimmed to the longest),
        ``history_emb [batch, history, dim]``, ``history_mask``, ``other_emb``, ``other_mask``,
        ``rows [batch]``, ``example_index [batch]`` (positions in this set) and ``meta`` (list
        of id dicts)."""
        rows = torch.tensor([it["row"] for it in items], dtype=torch.long)
        input_ids, attention_mask = self.table.rows(rows)
        history, history_mask = pad_rows([it["history"] for it in items])
        others, other_mask = pad_rows([it["others"] for it in items])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "history_emb": self.news_vectors[history],
            "history_mask": history_mask,
            "other_emb": self.news_vectors[others],
            "other_mask": other_mask,
            "rows": rows,
            "example_index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "meta": [it["meta"] for it in items],
        }
