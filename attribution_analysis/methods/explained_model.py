"""The function an attribution method explains, behind one small interface.

Every method (DIFFMASK, Integrated Gradients, ...) works on word embeddings ``[batch, tokens,
hidden]`` of the explained text plus a ``context`` dict of fixed inputs. Two adapters ship:

* :class:`NewsRecommenderAdapter`: the NRMS click score of a candidate title, through the whole
  news encoder (PLM -> self-attention -> additive attention), against the user vector computed from
  the precomputed history news vectors ``context["history_emb"] [batch, history, dim]`` and
  ``context["history_mask"] [batch, history]``.
* :class:`SequenceClassifierAdapter`: any ``transformers`` ``AutoModelForSequenceClassification``
  (BERT-style); the explained output is the predicted class.

To explain another model, subclass :class:`ExplainedModel` and implement ``embed``, ``forward``,
``divergence``, ``agreement`` and ``explained_output`` (see the two adapters: ~40 lines each).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attribution_analysis.models.nrms import NRMS

Context = dict[str, torch.Tensor]


@dataclass
class ModelOutput:
    """``output``: ``[batch]`` click score (recommender) or ``[batch, classes]`` logits;
    ``hidden_states``: embedding output + every layer ``[batch, tokens, hidden]`` when asked;
    ``token_weights``: the news encoder's additive-attention weights ``[batch, tokens]``."""

    output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    token_weights: torch.Tensor | None = None


def bernoulli_kl_from_logits(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))), elementwise, computed stably."""
    p = torch.sigmoid(p_logit)
    return p * (F.logsigmoid(p_logit) - F.logsigmoid(q_logit)) + (1 - p) * (
        F.logsigmoid(-p_logit) - F.logsigmoid(-q_logit)
    )


def decision_kl_from_logits(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """The one-sided Bernoulli KL of a decision, elementwise: ``KL(sigmoid(p) || sigmoid(q))``
    where ``q`` moved against the decision that ``p`` makes (``q < p`` for ``p >= 0``, a predicted
    click; ``q > p`` otherwise), 0 where it moved with it. Continuous, with zero gradient at
    ``q = p``: a mask that strengthens the decision costs nothing."""
    kl = bernoulli_kl_from_logits(p_logit, q_logit)
    weakened = torch.where(p_logit >= 0, q_logit < p_logit, q_logit > p_logit)
    return torch.where(weakened, kl, torch.zeros_like(kl))


def categorical_kl_from_logits(
    p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) over the last dimension ``[..., classes]`` -> ``[...]``."""
    if mask is not None:
        neg = torch.finfo(p_logits.dtype).min
        p_logits = p_logits.masked_fill(~mask, neg)
        q_logits = q_logits.masked_fill(~mask, neg)
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    terms = log_p.exp() * (log_p - log_q)
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return terms.sum(-1)


class ExplainedModel(ABC):
    """An explained function of word embeddings (plus fixed context). Not an ``nn.Module``: the
    explained model is never part of an attribution method's state."""

    name: str = "model"
    divergences: tuple[str, ...] = ()
    default_divergence: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings ``[batch, tokens, hidden]`` (no position embeddings)."""

    @abstractmethod
    def forward(
        self,
        word_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        output_hidden_states: bool = False,
        edit: dict[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> ModelOutput:
        """Run the model on word embeddings; ``edit[k]`` replaces hidden state k."""

    def prepare_context(self, context: Context) -> Context:
        """Precompute what stays fixed for a batch (called once per batch)."""
        return context

    @property
    def context_vector_size(self) -> int:
        """Size of :meth:`context_vector` (0: the model has no per-example context vector)."""
        return 0

    def context_vector(self, context: Context) -> torch.Tensor:
        """The per-example vector ``[batch, context_vector_size]`` that conditions the output
        beyond the explained tokens (NRMS: the user vector), read by a probe with
        ``probe_context="user"``; ``context`` is prepared (:meth:`prepare_context`)."""
        raise ValueError(f"the explained model ({self.name}) has no per-example context vector")

    def hidden_states(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor, context: Context
    ) -> tuple[torch.Tensor, ...]:
        """The hidden states of :meth:`forward` (embedding output + every layer, each ``[batch,
        tokens, hidden]``) without needing its output: adapters may skip the model's head."""
        out = self.forward(word_embeddings, attention_mask, context, output_hidden_states=True)
        return out.hidden_states

    linear_readout: bool = False
    """True when the explained logit is linear in a pooled representation of the tokens:
    ``logit = sign * context_vector(context) . pooled(...).output`` (NRMS: user . news vector)."""

    def pooled(self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        """The pooled representation ``output [batch, dim]`` (with ``hidden_states`` and
        ``token_weights``) of a model with :attr:`linear_readout`; others raise ``ValueError``."""
        raise ValueError(
            f"the explained model ({self.name}) has no linear read-out of a pooled representation"
        )

    @abstractmethod
    def divergence(
        self, original: torch.Tensor, masked: torch.Tensor, context: Context, kind: str
    ) -> torch.Tensor:
        """Per-example divergence ``[batch]`` between original and masked outputs."""

    @abstractmethod
    def agreement(
        self, original: torch.Tensor, masked: torch.Tensor, context: Context, kind: str
    ) -> torch.Tensor:
        """Per-example bool ``[batch]``: the masked output makes the same decision."""

    @abstractmethod
    def explained_output(self, output: torch.Tensor, context: Context) -> torch.Tensor:
        """The scalar reported per example ``[batch]`` (a probability)."""

    @abstractmethod
    def explained_logit(self, output: torch.Tensor, context: Context) -> torch.Tensor:
        """The scalar gradient methods attribute ``[batch]`` (a score/logit)."""

    decision_key: str = "target"

    def decision(self, output: torch.Tensor) -> torch.Tensor:
        """The decision the model takes on ``output`` (a per-example tensor ``[batch]``)."""
        raise NotImplementedError

    @torch.no_grad()
    def with_decision(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: Context
    ) -> Context:
        """``context`` plus the model's decision on the original input, so that
        :meth:`explained_output` / :meth:`explained_logit` explain that decision on every
        perturbed input too (the ERASER convention: explain the predicted class)."""
        if self.decision_key in context:
            return context
        context = self.prepare_context(context)
        out = self.forward(self.embed(input_ids), attention_mask, context)
        return {**context, self.decision_key: self.decision(out.output)}

    def fingerprint(self) -> str:
        """Identifies the explained weights (checkpoints made for other weights are refused)."""
        from attribution_analysis.models.serialization import model_fingerprint

        return model_fingerprint(self.model)

    def check_divergence(self, kind: str) -> str:
        kind = kind or self.default_divergence
        if kind not in self.divergences:
            raise ValueError(
                f"divergence {kind!r} is not available for {self.name}; choose from "
                f"{', '.join(self.divergences)}"
            )
        return kind


class BinaryLogitModel(ExplainedModel):
    """An explained model whose output is one logit per example ``[batch]`` (a click or a
    binary decision): Bernoulli-KL divergence, sigmoid probability, sign decision. Subclasses
    implement ``hidden_size``, ``num_layers``, ``embed`` and ``forward``."""

    divergences = ("bernoulli_kl",)
    default_divergence = "bernoulli_kl"

    def divergence(self, original, masked, context, kind):
        self.check_divergence(kind)
        return bernoulli_kl_from_logits(original, masked)

    def agreement(self, original, masked, context, kind):
        return (original > 0) == (masked > 0)

    def explained_output(self, output, context):
        return torch.sigmoid(self.explained_logit(output, context))

    def explained_logit(self, output, context):
        return output


class NewsRecommenderAdapter(ExplainedModel):
    """Explains the NRMS click score of one candidate given the user's history vectors.

    Context keys: ``history_emb [batch, history, dim]``, ``history_mask [batch, history]``;
    for ``impression_kl`` also ``other_emb [batch, others, dim]`` and ``other_mask``
    (the impression's other candidates, held fixed).

    Divergences (per example):
      * ``bernoulli_kl`` (default): KL between the click probabilities sigmoid(score).
      * ``decision_kl``: the same KL, counted only where masking weakened the decision
        (lowered the score of a predicted click, raised that of a predicted non-click): the
        mask must keep the words that make the decision, not those that temper it.
      * ``impression_kl``: KL between the softmax distributions over the impression's candidates
        where only the explained candidate is masked.
      * ``squared_score``: (score - masked score)^2. Scale-dependent: the margin means different
        things for differently scaled models.
    """

    name = "nrms"
    divergences = ("bernoulli_kl", "decision_kl", "impression_kl", "squared_score")
    default_divergence = "bernoulli_kl"

    def __init__(self, model: NRMS) -> None:
        super().__init__(model)
        self.nrms = model

    @property
    def hidden_size(self) -> int:
        return self.nrms.news_encoder.hidden_size

    @property
    def num_layers(self) -> int:
        return self.nrms.news_encoder.num_layers

    @property
    def context_vector_size(self) -> int:
        return self.nrms.dim

    def context_vector(self, context: Context) -> torch.Tensor:
        """The user vector ``[batch, dim]`` (needs a prepared context)."""
        return context["user"]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.nrms.news_encoder.embed_words(input_ids)

    def prepare_context(self, context: Context) -> Context:
        if "user" in context:
            return context
        hist = context["history_emb"]
        mask = context.get("history_mask")
        if mask is None:
            mask = torch.ones(hist.shape[:2], dtype=torch.bool, device=hist.device)
        return {**context, "user": self.nrms.user_vector(hist, mask)}

    def forward(
        self, word_embeddings, attention_mask, context, output_hidden_states=False, edit=None
    ):
        context = self.prepare_context(context)
        enc = self.nrms.news_encoder.forward_from_word_embeddings(
            word_embeddings, attention_mask, output_hidden_states=output_hidden_states, edit=edit
        )
        score = self.nrms.score(context["user"], enc.vectors)
        return ModelOutput(score, enc.hidden_states, enc.token_weights)

    def hidden_states(self, word_embeddings, attention_mask, context):
        """The PLM's states only: no news-encoder head, no user vector."""
        return self.nrms.news_encoder.plm_states(word_embeddings, attention_mask)

    linear_readout = True

    def pooled(self, word_embeddings, attention_mask):
        """The news vector ``output [batch, dim]``, every hidden state and the pooling weights;
        the click score is ``user . output``."""
        enc = self.nrms.news_encoder.forward_from_word_embeddings(
            word_embeddings, attention_mask, output_hidden_states=True
        )
        return ModelOutput(enc.vectors, enc.hidden_states, enc.token_weights)

    def _impression_logits(self, score: torch.Tensor, context: Context):
        others = torch.einsum("bd,bnd->bn", context["user"], context["other_emb"])
        logits = torch.cat([score[:, None], others], dim=1)
        mask = torch.cat(
            [torch.ones_like(score[:, None], dtype=torch.bool), context["other_mask"].bool()], 1
        )
        return logits, mask

    def divergence(self, original, masked, context, kind):
        kind = self.check_divergence(kind)
        if kind == "bernoulli_kl":
            return bernoulli_kl_from_logits(original, masked)
        if kind == "decision_kl":
            return decision_kl_from_logits(original, masked)
        if kind == "squared_score":
            return (original - masked) ** 2
        context = self.prepare_context(context)
        p, mask = self._impression_logits(original, context)
        q, _ = self._impression_logits(masked, context)
        return categorical_kl_from_logits(p, q, mask)

    def agreement(self, original, masked, context, kind):
        if self.check_divergence(kind) != "impression_kl":
            return (original > 0) == (masked > 0)
        context = self.prepare_context(context)
        p, mask = self._impression_logits(original, context)
        q, _ = self._impression_logits(masked, context)
        rank_p = ((p[:, 1:] > p[:, :1]) & mask[:, 1:]).sum(-1)
        rank_q = ((q[:, 1:] > q[:, :1]) & mask[:, 1:]).sum(-1)
        return rank_p == rank_q

    decision_key = "decision_sign"

    def decision(self, output):
        """+1 for a predicted click (score >= 0), -1 otherwise."""
        return torch.where(output >= 0, 1.0, -1.0).to(output.dtype)

    def explained_output(self, output, context):
        """The click probability, or with ``decision_sign`` in the context the probability of the
        original decision (p for predicted clicks, 1 - p otherwise)."""
        return torch.sigmoid(self.explained_logit(output, context))

    def explained_logit(self, output, context):
        sign = context.get("decision_sign")
        return output if sign is None else output * sign.to(output.device, output.dtype)


def _layer_hook(fn: Callable[[torch.Tensor], torch.Tensor]):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return hook


class SequenceClassifierAdapter(ExplainedModel):
    """Explains a ``transformers`` sequence classifier (BERT-style encoder).

    Divergence ``categorical_kl``: KL between the original and masked class distributions.
    The explained output is the probability of the class the original input predicts
    (``context["target"]`` overrides it).
    """

    name = "sequence_classifier"
    divergences = ("categorical_kl",)
    default_divergence = "categorical_kl"

    @property
    def base(self) -> nn.Module:
        return self.model.base_model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def embed(self, input_ids):
        return self.model.get_input_embeddings()(input_ids)

    def _edit_modules(self, edit):
        modules = []
        for k, fn in (edit or {}).items():
            module = self.base.embeddings if k == 0 else self.base.encoder.layer[k - 1]
            modules.append(module.register_forward_hook(_layer_hook(fn)))
        return modules

    def forward(
        self, word_embeddings, attention_mask, context, output_hidden_states=False, edit=None
    ):
        handles = self._edit_modules(edit)
        try:
            out = self.model(
                inputs_embeds=word_embeddings,
                attention_mask=attention_mask,
                output_hidden_states=output_hidden_states,
            )
        finally:
            for h in handles:
                h.remove()
        hidden = tuple(out.hidden_states) if output_hidden_states else None
        return ModelOutput(out.logits, hidden)

    def decision(self, output):
        return output.argmax(-1)

    def _target(self, output, context):
        target = context.get("target")
        return output.argmax(-1) if target is None else target.to(output.device)

    def divergence(self, original, masked, context, kind):
        self.check_divergence(kind)
        return categorical_kl_from_logits(original, masked)

    def agreement(self, original, masked, context, kind):
        return original.argmax(-1) == masked.argmax(-1)

    def explained_output(self, output, context):
        probs = torch.softmax(output, -1)
        return probs.gather(-1, self._target(output, context)[:, None]).squeeze(-1)

    def explained_logit(self, output, context):
        logp = torch.log_softmax(output, -1)
        return logp.gather(-1, self._target(output, context)[:, None]).squeeze(-1)


def make_adapter(model: nn.Module | ExplainedModel) -> ExplainedModel:
    """Wrap ``model`` in the matching adapter (an :class:`ExplainedModel` passes through)."""
    if isinstance(model, ExplainedModel):
        return model
    if isinstance(model, NRMS):
        return NewsRecommenderAdapter(model)
    config = getattr(model, "config", None)
    if (
        config is not None
        and hasattr(model, "get_input_embeddings")
        and hasattr(config, "num_labels")
    ):
        return SequenceClassifierAdapter(model)
    raise TypeError(
        f"no adapter for {type(model).__name__}: pass an NRMS, a transformers sequence "
        "classifier, or an ExplainedModel subclass"
    )


__all__ = [
    "ExplainedModel",
    "ModelOutput",
    "NewsRecommenderAdapter",
    "SequenceClassifierAdapter",
    "bernoulli_kl_from_logits",
    "decision_kl_from_logits",
    "categorical_kl_from_logits",
    "make_adapter",
]
