"""DIFFMASK's kept set, ordered by an amortised estimate of each token's signed effect.

Like ``diffmask_loo`` (:mod:`.diffmask_loo_method`), but the leave-one-out effect under
DIFFMASK's baseline is not measured by one forward pass per token: it is predicted by an
:class:`~.effect_head.EffectHead` fitted once on training titles, from the features of one
forward pass (NRMS: ``e_hat_i = u . dv_hat_i``, exact in form because the click score is
linear in the news vector):

    score_i = kept_i + s * e_hat_i / (1 + |s * e_hat_i|) / 2

``kept_i = 1`` when DIFFMASK's keep probability is at least ``KEPT_AT`` (0.5), else 0; ``s``
the decision's sign (+1 predicted click, -1 non-click). Every kept token ranks above every
dropped one (scores in (0.5, 1.5) and (-0.5, 0.5)); within each part, tokens predicted to
support the decision first, those predicted to oppose it last.

Cost: one forward pass of the explained model, shared by DIFFMASK's probe, the head's
features and (when the context lacks it) the decision, plus the probe and a matrix product;
fitting the head costs one forward pass per token of the fitting titles, once per DIFFMASK.
It needs a DIFFMASK that masks the input (``mask_layer: 0``) and a model with a linear
read-out (:attr:`ExplainedModel.linear_readout`: NRMS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.diffmask_loo_method import KEPT_AT, check_mask_layer
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.diffmask.effect_head import (
    EffectHead,
    check_linear_readout,
    fit_effect_head,
    token_features,
)
from attribution_analysis.utils.modes import eval_mode


class DiffMaskEffectMethod(DiffMaskMethod):
    """DIFFMASK's kept set first, each part ordered by the effect head's signed estimate (see
    the module docstring). Arguments as :class:`DiffMaskMethod`, plus:

    Args:
        effect_head: a fitted :class:`EffectHead` (fitted under DIFFMASK's current baseline);
            or
        titles: batches ``(input_ids, attention_mask)`` to fit one on (with DIFFMASK's current
            baseline) when the method is built.
        users: ``[m, dim]`` readout vectors (NRMS: user vectors) under which the ridge penalty
            that orders held-out titles best is chosen (optional; else the least squared
            error).
        quiet: no progress bar while fitting.

    The head belongs to the baseline it was fitted under: an attribution after DIFFMASK's
    baseline has changed (further training) is refused; build the method again.
    """

    name = "diffmask_effect"

    def __init__(
        self,
        *args,
        effect_head: EffectHead | None = None,
        titles: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        users: torch.Tensor | None = None,
        quiet: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_mask_layer(self.diffmask.settings["mask_layer"], "diffmask_effect")
        check_linear_readout(self.adapter)
        if (effect_head is None) == (titles is None):
            raise ValueError("pass exactly one of effect_head= (fitted) or titles= (to fit one)")
        self._fitted_baseline = self.diffmask.baseline.detach().clone()  # [hidden]
        if effect_head is None:
            effect_head = fit_effect_head(
                self.adapter,
                self._fitted_baseline,
                titles,
                self.scorable,
                users=users,
                seed=self.seed,
                quiet=quiet,
            )
        self.effect_head = effect_head

    def settings(self) -> dict:
        spearman = float(self.effect_head.fit_spearman)
        return {
            **super().settings(),
            "readout": "keep_probability",
            "order": "kept set (keep probability >= 0.5) first; each part by e / (1 + |e|) / 2, "
            "e the effect head's estimate of the leave-one-out effect on the decision's "
            "logit, DIFFMASK's baseline",
            "kept_at": KEPT_AT,
            "effect_head_ridge": float(self.effect_head.ridge),
            "effect_head_spearman": spearman if math.isfinite(spearman) else None,
        }

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` in (-0.5, 1.5) (0 on padding and special tokens)."""
        adapter = self.adapter
        baseline = self.diffmask.baseline.detach()
        if not torch.equal(baseline, self._fitted_baseline.to(baseline.device)):
            raise RuntimeError(
                "DIFFMASK's baseline changed after the effect head was fitted under it (further "
                "training?): build diffmask_effect again to refit the head"
            )
        context = adapter.prepare_context(context)
        with eval_mode(self.diffmask, adapter.model):
            pooled = adapter.pooled(adapter.embed(input_ids), attention_mask)
            user = adapter.context_vector(context)  # [batch, dim]
            if adapter.decision_key not in context:  # the score is user . pooled vector
                score = (user * pooled.output).sum(-1)
                context = {**context, adapter.decision_key: adapter.decision(score)}
            keep = self.diffmask.get_attributions(  # the probe reads the same pass's states
                input_ids,
                attention_mask,
                readout="keep_probability",
                hidden_states=pooled.hidden_states,
                **context,
            )
        head = self.effect_head.to(keep.device)
        dv = head(token_features(pooled))  # [batch, tokens, dim]
        sign = context[adapter.decision_key].float().to(user.device)  # [batch]
        user = user.float()
        effects = sign[:, None] * torch.einsum("btd,bd->bt", dv, user)
        kept = (keep >= KEPT_AT).to(effects.dtype)
        scores = kept + effects / (1 + effects.abs()) / 2
        return scores * self.scorable(input_ids, attention_mask)

    def explain(self, input_ids, attention_mask, context, tokenizer=None, ids=None):
        """Results with this method's scores (not DIFFMASK's keep probabilities)."""
        return AttributionMethod.explain(self, input_ids, attention_mask, context, tokenizer, ids)


__all__ = ["DiffMaskEffectMethod"]
