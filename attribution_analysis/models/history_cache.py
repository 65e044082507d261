"""News vectors of history-only titles reused while the recommender trains
(``train.history_cache_steps``).

In a training batch about 6 of every 7 distinct titles appear only in users' histories. With
``history_plm_grad: false`` they already pass the language model without gradient; their news
vectors still cost a forward pass of the fine-tuned layers and of the news encoder's head at
every step, although the same few thousand titles come back again and again. The cache keeps
each such vector, computed without gradient, for up to ``max_age`` training steps and computes
it again once it is older (the cache-accelerated news encoding of SpeedyFeed, Xiao et al.,
2021, "Training Large-Scale News Recommenders with Pretrained Language Models in the Loop").

What changes in training: a history-only title's vector may be up to ``max_age - 1``
optimizer steps old, and the news encoder (language model and head) learns from the
candidate titles only; the user encoder still learns from every history vector, and a title
that is also a candidate of the batch is always encoded afresh, with gradient. Scores in
evaluation and everything outside training are unchanged (the cache is used only while
gradients are enabled). The training loop clears the cache at the start of every epoch, so a
run resumed from an epoch checkpoint continues exactly as an uninterrupted one.

Memory: ``num_news x dim`` floats on the model's device (MIND-large, 161k news, dim 400:
0.26 GB in float32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NEVER = -(2**62)
"""``computed_at`` of a row that holds no vector."""


class HistoryVectorCache:
    """News vectors ``[num_rows, dim]`` of token-table rows with the step that computed each.

    ``max_age``: a vector computed at step ``s`` serves steps ``s .. s + max_age - 1``
    (``max_age=1``: every step computes afresh). :meth:`advance` moves to the next step.
    """

    def __init__(self, num_rows: int, max_age: int) -> None:
        if max_age < 1:
            raise ValueError(f"max_age must be >= 1, got {max_age}")
        self.num_rows = num_rows
        self.max_age = max_age
        self.step = 0
        self.vectors: torch.Tensor | None = None  # [num_rows, dim], allocated on first use
        self.computed_at = torch.full((num_rows,), NEVER, dtype=torch.long)
        self.computed = 0  # vectors computed so far (for logs and tests)

    def advance(self) -> None:
        """The next training step."""
        self.step += 1

    def clear(self) -> None:
        """Forget every vector (the training loop calls this at the start of each epoch)."""
        self.computed_at.fill_(NEVER)

    def get(
        self, rows: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Vectors ``[len(rows), dim]`` (no gradient) of the distinct token-table ``rows``
        ``[n]``; rows without a vector younger than ``max_age`` steps are computed by
        ``encode(rows_to_compute) -> [m, dim]`` under ``torch.no_grad()`` and stored."""
        rows_cpu = rows.cpu()
        stale = self.step - self.computed_at[rows_cpu] >= self.max_age
        if bool(stale.any()):
            need = rows_cpu[stale]
            with torch.no_grad():
                fresh = encode(need.to(rows.device)).float()
            if self.vectors is None:
                self.vectors = fresh.new_zeros(self.num_rows, fresh.shape[-1])
            self.vectors[need.to(self.vectors.device)] = fresh
            self.computed_at[need] = self.step
            self.computed += len(need)
        assert self.vectors is not None
        return self.vectors[rows_cpu.to(self.vectors.device)]


__all__ = ["HistoryVectorCache"]
