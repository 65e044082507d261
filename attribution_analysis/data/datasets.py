"""Torch datasets over MIND impressions: training samples (1 click + K negatives) and whole
impressions for evaluation. Items hold token-table row indices; collate functions pad histories
and candidate lists to the longest in the batch and return masks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from attribution_analysis.data.mind import Impression
from attribution_analysis.data.tokenization import PAD_NEWS_INDEX, TokenTable


@dataclass(frozen=True)
class TrainSample:
    """One click: ``candidates[0]`` is the clicked news item, the rest are K negatives."""

    history: tuple[int, ...]
    candidates: tuple[int, ...]


def _history_rows(impression: Impression, table: TokenTable, max_history: int) -> tuple[int, ...]:
    history = impression.history[-max_history:] if max_history > 0 else ()
    return tuple(table.lookup(history))


class ClickSamples(Dataset):
    """Training samples: each click gives 1 positive + ``npratio`` negatives from its impression.

    Negatives are drawn with replacement when the impression has fewer than ``npratio``; when it
    has none at all, from the whole news table. Draws depend only on ``(seed, epoch)``: call
    :meth:`set_epoch` to redraw them.
    """

    def __init__(
        self,
        impressions: Sequence[Impression],
        table: TokenTable,
        npratio: int = 4,
        max_history: int = 50,
        seed: int = 0,
    ) -> None:
        self.table = table
        self.npratio = npratio
        self.seed = seed
        self._clicks: list[tuple[tuple[int, ...], int, tuple[int, ...]]] = []
        for imp in impressions:
            if imp.labels is None:
                raise ValueError(f"impression {imp.impression_id} has no labels: cannot train")
            history = _history_rows(imp, table, max_history)
            rows = table.lookup(imp.candidates)
            negatives = tuple(r for r, y in zip(rows, imp.labels) if y == 0)
            for row, label in zip(rows, imp.labels):
                if label == 1:
                    self._clicks.append((history, row, negatives))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the negatives deterministically for ``epoch``."""
        rng = random.Random(f"{self.seed}-{epoch}")
        self.samples = [self._draw(rng, h, p, n) for h, p, n in self._clicks]

    def _draw(self, rng: random.Random, history, positive, negatives) -> TrainSample:
        k = self.npratio
        if len(negatives) >= k:
            chosen = rng.sample(negatives, k)
        elif negatives:
            chosen = [rng.choice(negatives) for _ in range(k)]
        else:
            chosen = [self._random_other(rng, positive) for _ in range(k)]
        return TrainSample(history, (positive, *chosen))

    def _random_other(self, rng: random.Random, positive: int) -> int:
        """A random news row other than the padding row and the clicked one."""
        if len(self.table) <= 2:
            raise ValueError("need at least two news items to draw negatives")
        row = rng.randrange(1, len(self.table) - 1)
        return row if row < positive else row + 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> TrainSample:
        return self.samples[i]


def pad_rows(rows: Sequence[Sequence[int]], min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of row indices to ``[batch, max_len]`` with their boolean mask."""
    length = max([len(r) for r in rows] + [min_len])
    out = torch.full((len(rows), length), PAD_NEWS_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return out, mask


def collate_clicks(samples: Sequence[TrainSample]) -> dict[str, torch.Tensor]:
    """Batch training samples.

    Returns ``history [batch, history]``, ``history_mask [batch, history]``,
    ``candidates [batch, 1 + K]`` and ``target [batch]`` (always 0: the click comes first).
    """
    history, history_mask = pad_rows([s.history for s in samples])
    candidates = torch.tensor([s.candidates for s in samples], dtype=torch.long)
    return {
        "history": history,
        "history_mask": history_mask,
        "candidates": candidates,
        "target": torch.zeros(len(samples), dtype=torch.long),
    }


class ImpressionSet(Dataset):
    """Whole impressions for evaluation and attribution (labels may be absent)."""

    def __init__(
        self, impressions: Sequence[Impression], table: TokenTable, max_history: int = 50
    ) -> None:
        self.impressions = list(impressions)
        self.table = table
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.impressions)

    def __getitem__(self, i: int) -> dict:
        imp = self.impressions[i]
        return {
            "index": i,
            "history": _history_rows(imp, self.table, self.max_history),
            "candidates": tuple(self.table.lookup(imp.candidates)),
            "labels": imp.labels,
        }


def collate_impressions(items: Sequence[dict]) -> dict[str, torch.Tensor | list]:
    """Batch impressions: ``history``/``history_mask`` ``[batch, history]``,
    ``candidates``/``candidate_mask`` ``[batch, max_candidates]``, ``index [batch]``, and
    ``labels`` as a list (``None`` entries for unlabelled impressions)."""
    history, history_mask = pad_rows([it["history"] for it in items])
    candidates, candidate_mask = pad_rows([it["candidates"] for it in items])
    return {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "history": history,
        "history_mask": history_mask,
        "candidates": candidates,
        "candidate_mask": candidate_mask,
        "labels": [it["labels"] for it in items],
    }
