"""Leave-one-out occlusion on word embeddings.

``score_i = F(x) - F(x with token i's word embedding replaced by a baseline)``, F the explained
logit (NRMS click score, history held fixed). The replacement is the [MASK] (default) or [PAD]
word embedding, zeros, or a given embedding vector (e.g. DIFFMASK's learned baseline); the
position embedding stays, so the sequence length never changes.
Positive = the token raises the score. All variants of a batch are stacked (variant-major) and
run in chunks of at most ``internal_batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attribution_analysis.methods.gradient_methods import (
    BASELINES,
    EmbeddingMethod,
    baseline_word_embeddings,
)


class LeaveOneOutMethod(EmbeddingMethod):
    """Leave-one-out occlusion (see the module docstring).

    Args:
        baseline: ``mask``, ``pad`` or ``zero`` (the replacement word embedding).
        baseline_embedding: ``[hidden]``, a replacement word embedding used instead of
            ``baseline`` (recorded as ``"embedding"``).
        internal_batch_size: rows per forward pass (default: one pass per batch, i.e.
            ``batch * n_positions`` rows).
    """

    name = "leave_one_out"
    word_aggregation = "sum"

    def __init__(
        self,
        model,
        special_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
        baseline: str = "mask",
        internal_batch_size: int | None = None,
        seed: int = 0,
        baseline_embedding: torch.Tensor | None = None,
    ) -> None:
        super().__init__(model, special_token_ids, seed, pad_token_id, mask_token_id)
        if baseline_embedding is not None:
            hidden = self.adapter.hidden_size
            if baseline_embedding.shape != (hidden,):
                raise ValueError(
                    f"baseline_embedding must be [hidden={hidden}], "
                    f"got {tuple(baseline_embedding.shape)}"
                )
            baseline = "embedding"
        elif baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if (
            baseline in ("pad", "mask")
            and {"pad": pad_token_id, "mask": mask_token_id}[baseline] is None
        ):
            raise ValueError(f"baseline {baseline!r} needs {baseline}_token_id")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        self.baseline = baseline
        self.baseline_embedding = baseline_embedding
        self.internal_batch_size = internal_batch_size

    def settings(self) -> dict:
        return {
            "baseline": self.baseline,
            "pad_token_id": self.pad_token_id,
            "mask_token_id": self.mask_token_id,
            "internal_batch_size": self.internal_batch_size,
            "explained": "logit",
            "input": "word_embeddings",
        }

    def _positions_per_pass(self, batch: int, n_positions: int) -> int:
        if self.internal_batch_size is None:
            return max(1, n_positions)
        return max(1, self.internal_batch_size // batch)

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens)."""
        scorable = self.scorable(input_ids, attention_mask)
        words, forward, args = self._inputs(input_ids, attention_mask, context)
        if self.baseline_embedding is None:
            base = baseline_word_embeddings(
                self.adapter, input_ids, scorable, self.baseline, self.pad_token_id,
                self.mask_token_id,
            )  # fmt: skip
        else:
            fill = self.baseline_embedding.to(words.device, words.dtype)
            base = torch.where(scorable[..., None], fill, words)
        batch = len(input_ids)
        scores = torch.zeros(scorable.shape, dtype=torch.float32, device=input_ids.device)
        positions = torch.nonzero(scorable.any(0), as_tuple=False).flatten()
        if len(positions) == 0:
            return scores  # no token to remove (e.g. empty titles)
        with self._mode():
            full = forward(words, *args).float()
            step = self._positions_per_pass(batch, len(positions))
            for chunk in positions.split(step):
                scores[:, chunk] = full[:, None] - self._occluded(words, base, chunk, forward, args)
        return scores * scorable

    @staticmethod
    def _occluded(words, base, chunk, forward, args) -> torch.Tensor:
        """Logits ``[batch, len(chunk)]`` with the word embedding at each position of ``chunk``
        replaced by ``base`` (one variant per position, stacked variant-major)."""
        batch, n = len(words), len(chunk)
        stacked = words.repeat(n, 1, 1)
        rows = torch.arange(n * batch, device=words.device)
        cols = chunk.repeat_interleave(batch)
        stacked[rows, cols] = base[rows % batch, cols]
        expanded = [torch.cat([a] * n, dim=0) for a in args]
        return forward(stacked, *expanded).float().view(n, batch).T


__all__ = ["LeaveOneOutMethod"]
