"""Random attributions: the baseline every metric needs beside the real methods.

Scores are uniform in [0, 1) from a CPU ``torch.Generator`` seeded with ``seed`` in the
constructor (so the same seed gives the same scores on any device for the same sequence of
calls; :meth:`RandomMethod.reset` restarts the sequence), and exactly 0 on padding and special
tokens.
"""

from __future__ import annotations

import torch

from attribution_analysis.methods.base import AttributionMethod


class RandomMethod(AttributionMethod):
    """Uniform random scores (see the module docstring). Needs no gradient or forward pass."""

    name = "random"
    word_aggregation = "sum"

    def __init__(self, model, *args, **kwargs) -> None:
        """The arguments of :class:`AttributionMethod` (``seed`` starts the sequence)."""
        super().__init__(model, *args, **kwargs)
        self.reset()

    def reset(self) -> None:
        """Restart the random sequence from ``seed``."""
        self.generator = torch.Generator(device="cpu").manual_seed(int(self.seed))

    def settings(self) -> dict:
        return {"distribution": "uniform[0, 1)", "generator": "torch cpu"}

    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens)."""
        scores = torch.rand(input_ids.shape, generator=self.generator)
        return scores.to(input_ids.device) * self.scorable(input_ids, attention_mask)


__all__ = ["RandomMethod"]
