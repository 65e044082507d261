"""DIFFMASK's kept set, ordered by each token's own signed effect under DIFFMASK's baseline.

DIFFMASK's keep probability answers a set question, "which tokens must stay so that the
decision stays within the margin", and carries no sign: inside the kept set (scores near 1) and
inside the dropped set (scores near 0) its order says little about whether a token supports or
opposes the decision. Removal curves (deletion, sufficiency) reward exactly that order. This
method keeps DIFFMASK's partition and orders each part by the token's leave-one-out effect with
DIFFMASK's learned baseline as the replacement:

    score_i = kept_i + e_i / (1 + |e_i|) / 2,   e_i = F(x) - F(x with token i -> the baseline)

with ``kept_i = 1`` when DIFFMASK's keep probability is at least :data:`KEPT_AT` and 0
otherwise, and ``F`` the explained logit of the model's decision on the original input (the
click score, sign-flipped for a predicted non-click). ``e / (1 + |e|) / 2`` is increasing and
stays strictly inside (-0.5, 0.5) in float32 for any effect a model produces (``tanh`` would
round to 0.5 beyond |e| of about 9), so every kept token ranks above every dropped one (scores
in (0.5, 1.5) and (-0.5, 0.5)); within each part, tokens that support the decision come first
and tokens that oppose it last.

Cost: DIFFMASK's one forward pass plus one forward pass per scorable position (batched), like
leave-one-out; no gradients. It needs a trained DIFFMASK, as ``diffmask`` does, that masks the
input (``mask_layer: 0``, the default).
"""

from __future__ import annotations

import torch

from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.occlusion import LeaveOneOutMethod
from attribution_analysis.utils.modes import eval_mode

KEPT_AT = 0.5
"""A token is in DIFFMASK's kept set when its keep probability (``readout="keep_probability"``,
whatever the DIFFMASK's own read-out) is at least this; the threshold of the kept share and the
top words."""


def check_mask_layer(mask_layer: int, method: str = "diffmask_loo") -> None:
    """Refuse a DIFFMASK that masks hidden states (``mask_layer > 0``): its baseline is not a
    word embedding, and ``method`` replaces word embeddings with it."""
    if mask_layer != 0:
        raise ValueError(
            f"{method} replaces word embeddings by DIFFMASK's baseline, but this DIFFMASK "
            f"masks the hidden states of layer {mask_layer} (mask_layer: 0 masks the input); "
            f"leave {method} out of the methods"
        )


class DiffMaskLeaveOneOutMethod(DiffMaskMethod):
    """DIFFMASK's kept set first, each part ordered by the signed leave-one-out effect under
    DIFFMASK's learned baseline (see the module docstring). Arguments as
    :class:`DiffMaskMethod`; ``internal_batch_size`` as :class:`LeaveOneOutMethod`."""

    name = "diffmask_loo"

    def __init__(self, *args, internal_batch_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_mask_layer(self.diffmask.settings["mask_layer"])
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
            "order": "kept set (keep probability >= 0.5) first; each part by e / (1 + |e|) / 2, "
            "e the leave-one-out effect on the decision's logit, DIFFMASK's baseline",
            "kept_at": KEPT_AT,
        }

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` in (-0.5, 1.5) (0 on padding and special tokens)."""
        adapter = self.adapter
        context = adapter.with_decision(input_ids, attention_mask, adapter.prepare_context(context))
        with eval_mode(self.diffmask, adapter.model):
            keep = self.diffmask.get_attributions(
                input_ids, attention_mask, readout="keep_probability", **context
            )
        self.occlusion.baseline_embedding = self.diffmask.baseline.detach()  # the current one
        effects = self.occlusion.attribute(input_ids, attention_mask, context)
        kept = (keep >= KEPT_AT).to(effects.dtype)
        scores = kept + effects / (1 + effects.abs()) / 2
        return scores * self.scorable(input_ids, attention_mask)

    def explain(self, input_ids, attention_mask, context, tokenizer=None, ids=None):
        """Results with this method's scores (not DIFFMASK's keep probabilities)."""
        return AttributionMethod.explain(self, input_ids, attention_mask, context, tokenizer, ids)


__all__ = ["KEPT_AT", "DiffMaskLeaveOneOutMethod", "check_mask_layer"]
