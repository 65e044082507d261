"""DIFFMASK's kept set, ordered by each token's own signed effect under DIFFMASK's baseline.

DIFFMASK's keep probability answers a set question, "which tokens must stay so that the
decision stays within the margin", and carries no sign: inside the kept set (scores near 1) and
inside the dropped set (scores near 0) its order says little about whether a token supports or
opposes the decision. Removal curves (deletion, sufficiency) reward exactly that order. This
method keeps DIFFMASK's partition and orders each part by the token's leave-one-out effect with
DIFFMASK's learned baseline as the replacement:

    score_i = kept_i + tanh(F(x) - F(x with token i replaced by the baseline)) / 2

with ``kept_i = 1`` when DIFFMASK's keep probability is at least :data:`KEPT_AT` and 0
otherwise, and ``F`` the explained logit of the decision (the click score, sign-flipped for a
predicted non-click). ``|tanh(.) / 2| < 0.5``, so every kept token ranks above every dropped one
(scores in (0.5, 1.5) and (-0.5, 0.5)); within each part, tokens that support the decision come
first and tokens that oppose it last.

Cost: DIFFMASK's one forward pass plus one forward pass per scorable position (batched), like
leave-one-out; no gradients. It needs a trained DIFFMASK, as ``diffmask`` does, that masks the
input (``mask_layer: 0``, the default).
"""

from __future__ import annotations

import torch

from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.occlusion import LeaveOneOutMethod

KEPT_AT = 0.5
"""A token is in DIFFMASK's kept set when its keep probability is at least this."""


class DiffMaskLeaveOneOutMethod(DiffMaskMethod):
    """DIFFMASK's kept set first, each part ordered by the signed leave-one-out effect under
    DIFFMASK's learned baseline (see the module docstring). Arguments as
    :class:`DiffMaskMethod`; ``internal_batch_size`` as :class:`LeaveOneOutMethod`."""

    name = "diffmask_loo"

    def __init__(self, *args, internal_batch_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        layer = self.diffmask.settings["mask_layer"]
        if layer != 0:
            raise ValueError(
                f"diffmask_loo replaces word embeddings by DIFFMASK's baseline, but this DIFFMASK "
                f"masks the hidden states of layer {layer} (mask_layer: 0 masks the input)"
            )
        self.occlusion = LeaveOneOutMethod(
            self.adapter,
            special_token_ids=self.special_token_ids,
            pad_token_id=self.pad_token_id,
            mask_token_id=self.mask_token_id,
            internal_batch_size=internal_batch_size,
            seed=self.seed,
            baseline_embedding=self.diffmask.baseline.detach(),
        )

    def settings(self) -> dict:
        return {
            **super().settings(),
            "order": "kept set (keep probability >= 0.5) first; each part by "
            "tanh(leave-one-out effect on the explained logit) / 2, DIFFMASK's baseline",
            "kept_at": KEPT_AT,
        }

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` in (-0.5, 1.5) (0 on padding and special tokens)."""
        keep = super()._attribute(input_ids, attention_mask, context)
        effects = self.occlusion.attribute(input_ids, attention_mask, context)
        kept = (keep >= KEPT_AT).to(effects.dtype)
        scores = kept + torch.tanh(effects) / 2
        return scores * self.scorable(input_ids, attention_mask)

    def explain(self, input_ids, attention_mask, context, tokenizer=None, ids=None):
        """Results with this method's scores (not DIFFMASK's keep probabilities)."""
        return AttributionMethod.explain(self, input_ids, attention_mask, context, tokenizer, ids)


__all__ = ["KEPT_AT", "DiffMaskLeaveOneOutMethod"]
