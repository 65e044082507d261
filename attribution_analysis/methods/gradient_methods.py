"""Gradient baselines on word embeddings (Captum), and the helpers shared by every method that
runs the explained model on (edited) word embeddings.

Every method here explains the same function as DIFFMASK: the explained logit (the NRMS click
score) of ``adapter.forward`` on the candidate's word embeddings ``[batch, tokens, hidden]``,
with the context (the user's history vectors) held fixed. Position embeddings are added by the
adapter, so an edited or scaled word embedding keeps its position. Scores are exactly 0 on
padding and special tokens.

* :class:`SaliencyMethod`: the gradient of the logit w.r.t. each word embedding, reduced over
  the hidden dimension by its L2 norm (``norm="l2"``, default) or by the sum of absolute values
  (``norm="sum_abs"``). Non-negative: it ranks by sensitivity, not by direction.
* :class:`InputXGradientMethod`: ``x * dF/dx`` summed over the hidden dimension (signed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from captum.attr import InputXGradient, Saliency

from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.explained_model import Context, ExplainedModel
from attribution_analysis.utils.modes import eval_mode

BASELINES = ("pad", "mask", "zero")
SALIENCY_NORMS = ("l2", "sum_abs")


def batch_context(context: Context, batch: int) -> tuple[list[str], list[torch.Tensor], Context]:
    """Split ``context`` into per-example tensors (first dimension ``batch``: expanded along with
    the inputs) and the rest (fixed). Returns ``(keys, tensors, fixed)``."""
    keys, values, fixed = [], [], {}
    for key, value in context.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
            keys.append(key)
            values.append(value)
        else:
            fixed[key] = value
    return keys, values, fixed


def expand_context(context: Context, batch: int, n: int) -> Context:
    """Repeat every per-example context tensor ``n`` times along dimension 0 (variant-major:
    row ``v * batch + b`` belongs to example ``b``), as for inputs built with ``.repeat``."""
    keys, values, fixed = batch_context(context, batch)
    repeated = {k: torch.cat([v] * n, dim=0) for k, v in zip(keys, values)}
    return {**fixed, **repeated}


def logit_function(
    adapter: ExplainedModel, keys: Sequence[str], fixed: Context
) -> Callable[..., torch.Tensor]:
    """``f(word_embeddings, attention_mask, *context_tensors) -> [batch]``: the explained logit.

    The context tensors arrive positionally (in the order of ``keys``) so that Captum can expand
    them with the inputs; ``fixed`` holds the context entries without a batch dimension.
    """

    def forward(words: torch.Tensor, attention_mask: torch.Tensor, *values: torch.Tensor):
        ctx = {**fixed, **dict(zip(keys, values))}
        out = adapter.forward(words, attention_mask, ctx)
        return adapter.explained_logit(out.output, ctx)

    return forward


def baseline_word_embeddings(
    adapter: ExplainedModel,
    input_ids: torch.Tensor,
    scorable: torch.Tensor,
    baseline: str,
    pad_token_id: int | None = None,
    mask_token_id: int | None = None,
) -> torch.Tensor:
    """Baseline input ``[batch, tokens, hidden]``: the [PAD] or [MASK] word embedding (or zeros)
    at scorable positions; special tokens and padding keep their own word embeddings (the BERT
    practice ``[CLS] [PAD] ... [SEP]``)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    with torch.no_grad():
        words = adapter.embed(input_ids).detach()
        if baseline == "zero":
            fill = torch.zeros_like(words[0, 0])
        else:
            token = pad_token_id if baseline == "pad" else mask_token_id
            if token is None:
                raise ValueError(f"baseline {baseline!r} needs {baseline}_token_id")
            fill = adapter.embed(torch.tensor([[int(token)]], device=input_ids.device))[0, 0]
        return torch.where(scorable[..., None], fill.to(words.dtype), words)


class EmbeddingMethod(AttributionMethod):
    """Shared plumbing: the explained logit as a function of word embeddings with the context
    passed as extra arguments, evaluated in eval mode."""

    def _inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: Context
    ) -> tuple[torch.Tensor, Callable[..., torch.Tensor], tuple]:
        """``(word_embeddings [batch, tokens, hidden] detached, forward, extra_args)``."""
        context = self.adapter.prepare_context(context)
        keys, values, fixed = batch_context(context, len(input_ids))
        words = self.adapter.embed(input_ids).detach()
        forward = logit_function(self.adapter, keys, fixed)
        return words, forward, (attention_mask, *values)

    def _mode(self) -> contextlib.AbstractContextManager:
        return eval_mode(self.adapter.model)


class SaliencyMethod(EmbeddingMethod):
    """Gradient saliency (Simonyan et al., 2014) on word embeddings.

    Token score: ``||dF/dx_i||_2`` (``norm="l2"``) or ``sum_h |dF/dx_ih|`` (``norm="sum_abs"``)
    over the hidden dimension, F the explained logit. Non-negative.
    """

    name = "saliency"
    word_aggregation = "sum"

    def __init__(
        self,
        model,
        special_token_ids: Sequence[int] = (),
        norm: str = "l2",
        seed: int = 0,
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
    ) -> None:
        super().__init__(model, special_token_ids, seed, pad_token_id, mask_token_id)
        if norm not in SALIENCY_NORMS:
            raise ValueError(f"norm must be one of {SALIENCY_NORMS}, got {norm!r}")
        self.norm = norm

    def settings(self) -> dict:
        return {"norm": self.norm, "explained": "logit", "input": "word_embeddings"}

    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens)."""
        words, forward, args = self._inputs(input_ids, attention_mask, context)
        words.requires_grad_(True)
        with self._mode():
            grads = Saliency(forward).attribute(words, abs=True, additional_forward_args=args)
        grads = grads.detach()
        scores = grads.norm(dim=-1) if self.norm == "l2" else grads.sum(-1)
        return scores * self.scorable(input_ids, attention_mask)


class InputXGradientMethod(EmbeddingMethod):
    """Input x gradient (Shrikumar et al., 2016) on word embeddings: ``sum_h x_ih dF/dx_ih``
    (signed; equals Integrated Gradients with a zero baseline for a linear model)."""

    name = "input_x_gradient"
    word_aggregation = "sum"

    def settings(self) -> dict:
        return {"reduction": "sum", "explained": "logit", "input": "word_embeddings"}

    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens)."""
        words, forward, args = self._inputs(input_ids, attention_mask, context)
        words.requires_grad_(True)
        with self._mode():
            attr = InputXGradient(forward).attribute(words, additional_forward_args=args)
        return attr.detach().sum(-1) * self.scorable(input_ids, attention_mask)


__all__ = [
    "BASELINES",
    "EmbeddingMethod",
    "InputXGradientMethod",
    "SaliencyMethod",
    "baseline_word_embeddings",
    "batch_context",
    "expand_context",
    "logit_function",
]
