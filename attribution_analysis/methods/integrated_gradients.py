"""Integrated Gradients (Sundararajan, Taly, Yan, ICML 2017, arXiv:1703.01365) on word embeddings.

``IG_i = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da`` with F the explained logit
(the NRMS click score given the fixed user vector), computed by Captum's ``IntegratedGradients``
over the candidate's word embeddings ``[batch, tokens, hidden]``. The context (history vectors)
goes in as ``additional_forward_args``, so Captum repeats it for the ``n_steps * batch`` rows.
The token score is the sum over the hidden dimension.

Baseline x': the [PAD] (default) or [MASK] word embedding, or zeros, at scorable positions;
special tokens and padding keep their own embeddings, and positions keep their position
embeddings. Completeness: ``sum_i IG_i = F(x) - F(x')`` up to the integration error; the error
``|sum_i IG_i - (F(x) - F(x'))| / |F(x) - F(x')|`` of each example is returned with the scores
by ``attribute(..., return_extras=True)`` (``completeness_error``; nan where ``F(x) = F(x')``),
as Captum returns its convergence delta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from captum.attr import IntegratedGradients

from attribution_analysis.methods.gradient_methods import (
    BASELINES,
    EmbeddingMethod,
    baseline_word_embeddings,
)

IG_METHODS = (
    "gausslegendre",
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
)


def relative_completeness_error(delta: torch.Tensor, difference: torch.Tensor) -> list[float]:
    """``|delta| / |F(x) - F(x')|`` per example (nan where the difference is 0)."""
    out = []
    for d, diff in zip(delta.tolist(), difference.tolist()):
        out.append(abs(d) / abs(diff) if diff != 0 else math.nan)
    return out


class IntegratedGradientsMethod(EmbeddingMethod):
    """Integrated Gradients on word embeddings (see the module docstring).

    Args:
        model: an NRMS, a sequence classifier or an ``ExplainedModel``.
        special_token_ids: ids never scored (score 0) and kept in the baseline.
        pad_token_id, mask_token_id: ids whose word embeddings form the ``pad``/``mask``
            baselines.
        baseline: ``pad``, ``mask`` or ``zero``.
        n_steps: integration steps; ``method``: Captum's approximation (``gausslegendre``).
        internal_batch_size: rows per forward pass (default: all ``n_steps * batch`` at once).
    """

    name = "ig"
    word_aggregation = "sum"

    def __init__(
        self,
        model,
        special_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
        baseline: str = "pad",
        n_steps: int = 50,
        internal_batch_size: int | None = None,
        method: str = "gausslegendre",
        seed: int = 0,
    ) -> None:
        super().__init__(model, special_token_ids, seed, pad_token_id, mask_token_id)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if baseline != "zero" and {"pad": pad_token_id, "mask": mask_token_id}[baseline] is None:
            raise ValueError(f"baseline {baseline!r} needs {baseline}_token_id")
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if method not in IG_METHODS:
            raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
        self.baseline = baseline
        self.n_steps = n_steps
        self.internal_batch_size = internal_batch_size
        self.method = method

    def settings(self) -> dict:
        return {
            "baseline": self.baseline,
            "pad_token_id": self.pad_token_id,
            "mask_token_id": self.mask_token_id,
            "n_steps": self.n_steps,
            "method": self.method,
            "internal_batch_size": self.internal_batch_size,
            "explained": "logit",
            "input": "word_embeddings",
        }

    def baseline_embeddings(self, input_ids, attention_mask) -> torch.Tensor:
        """The baseline x' ``[batch, tokens, hidden]``."""
        scorable = self.scorable(input_ids, attention_mask)
        return baseline_word_embeddings(
            self.adapter, input_ids, scorable, self.baseline, self.pad_token_id, self.mask_token_id
        )

    def _attribute(self, input_ids, attention_mask, context) -> tuple[torch.Tensor, dict]:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens) and the extras
        ``completeness_error`` (relative) and ``convergence_delta`` (``sum IG - (F(x) -
        F(x'))``), each ``[batch]``, as Captum returns the convergence delta."""
        words, forward, args = self._inputs(input_ids, attention_mask, context)
        base = self.baseline_embeddings(input_ids, attention_mask)
        with self._mode():
            attr, delta = IntegratedGradients(forward).attribute(
                words,
                baselines=base,
                additional_forward_args=args,
                n_steps=self.n_steps,
                method=self.method,
                internal_batch_size=self.internal_batch_size,
                return_convergence_delta=True,
            )
            with torch.no_grad():
                difference = forward(words, *args) - forward(base, *args)
        delta = delta.detach().float().cpu()
        extras = {
            "completeness_error": torch.tensor(
                relative_completeness_error(delta, difference.float().cpu())
            ),
            "convergence_delta": delta,
        }
        return attr.detach().sum(-1) * self.scorable(input_ids, attention_mask), extras


__all__ = ["IG_METHODS", "IntegratedGradientsMethod", "relative_completeness_error"]
