"""The news encoder's own additive-attention weights as attributions.

NRMS pools the candidate's token states with additive attention; the weights
(``ModelOutput.token_weights [batch, tokens]``) say how much each token's state contributes to
the news vector, not how the click score depends on the token (attention is not necessarily
explanation: Jain & Wallace, NAACL 2019). They are renormalised over scorable tokens, so each
example's scores sum to 1 over its scorable tokens (0 elsewhere).
"""

from __future__ import annotations

import torch

from attribution_analysis.methods.gradient_methods import EmbeddingMethod


class AttentionMethod(EmbeddingMethod):
    """Additive-attention weights of the news encoder, renormalised over scorable tokens."""

    name = "attention"
    word_aggregation = "sum"

    def settings(self) -> dict:
        return {"weights": "news encoder additive attention", "normalised": "scorable tokens"}

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` in [0, 1], summing to 1 over scorable tokens."""
        context = self.adapter.prepare_context(context)
        with self._mode():
            out = self.adapter.forward(self.adapter.embed(input_ids), attention_mask, context)
        if out.token_weights is None:
            raise ValueError(f"{self.adapter.name} exposes no token attention weights")
        return renormalise(out.token_weights.float(), self.scorable(input_ids, attention_mask))


def renormalise(weights: torch.Tensor, scorable: torch.Tensor) -> torch.Tensor:
    """``weights [batch, tokens]`` restricted to ``scorable`` and rescaled to sum to 1 per row
    (rows without scorable tokens, or with zero mass on them, stay 0)."""
    kept = weights * scorable
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp(min=torch.finfo(kept.dtype).tiny), kept)


__all__ = ["AttentionMethod", "renormalise"]
