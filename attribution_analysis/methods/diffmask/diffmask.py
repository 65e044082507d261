"""DIFFMASK (De Cao, Schlichtkrull, Aziz, Titov. "How do Decisions Emerge across Layers in Neural
Models? Interpretation with Differentiable Masking." EMNLP 2020,
doi:10.18653/v1/2020.emnlp-main.262,
arXiv:2004.14992) with Hard Concrete gates (Louizos, Welling, Kingma, ICLR 2018, arXiv:1712.01312).

A probe reads the explained model's hidden states on the original input and predicts one gate per
token. The gated input replaces the **word embedding** of each token with a learned baseline,
``x_hat = z * x + (1 - z) * b``, keeping position embeddings; padding and special tokens are
never masked and never scored. Training (see :mod:`.train_diffmask`) minimises the expected
number of kept tokens (L0) subject to a per-example divergence ``D(y || y_hat) <= margin``.

Once trained, attributions cost one forward pass of the explained model (to read its hidden
states) plus the small probe: :meth:`DIFFMASK.get_attributions`.

Read-outs (``readout``):
  * ``keep_probability`` (default): ``P(z != 0)`` in closed form, the product over voting probes;
    in [0, 1], calibrated as "probability that the token must be kept".
  * ``sigmoid``: product over probes of ``sigmoid(log_alpha)``.
  * ``deterministic``: the test-time gate (product over probes), exactly 0 for dropped tokens.
All three are monotone in each probe's ``log_alpha``, so with one probe their rankings agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attribution_analysis.config import DiffMaskConfig, GateConfig, ObjectiveConfig, ProbeConfig
from attribution_analysis.methods.base import build_results, scorable_mask
from attribution_analysis.methods.diffmask.probe_network import (
    ProbeNetwork,
    ProbeOutput,
    SimpleProbeNetwork,
)
from attribution_analysis.methods.diffmask.stochastic_gates import StochasticGates
from attribution_analysis.methods.explained_model import (
    Context,
    ExplainedModel,
    ModelOutput,
    make_adapter,
)
from attribution_analysis.methods.result import AttributionResult, library_versions
from attribution_analysis.utils.modes import eval_mode

_PROBE, _GATES, _OBJECTIVE = ProbeConfig(), GateConfig(), ObjectiveConfig()
"""The config sections whose fields are the constructor's defaults (one source of truth)."""

PROBE_TYPES = ("simple", "layerwise")
PROBE_CONTEXTS = ("auto", "none", "user")
NON_CONSTRUCTOR_SETTINGS = ("explained_model", "baseline_used")
"""Keys of ``DIFFMASK.settings`` that are recorded but are not constructor arguments."""
READOUTS = ("keep_probability", "sigmoid", "deterministic")
BASELINE_INITS = ("mask", "zeros", "pad")
CONSTRAINTS = ("per_example", "mean")
SPARSITY_LOSSES = ("l0", "log_l0")
DELIVERED_GRADIENTS = ("exact", "straight_through")
SATURATION = 1e-3
"""A gate is saturated when its sampled value passes a gradient with a probability below this."""


@dataclass
class DiffMaskStep:
    """Per-example quantities of one forward pass (all ``[batch]`` unless stated).

    ``l0``: expected share of kept tokens (mean P(z != 0) over scorable tokens);
    ``divergence``; ``within_margin``: divergence <= margin; ``agreement``: same decision;
    ``original``/``masked``: the model outputs; ``gates`` ``[batch, tokens]``; ``scorable``
    ``[batch, tokens]`` (tokens that may be masked); ``delivered_within_margin``: in training
    steps of the ``per_example`` constraint, whether the deterministic (delivered) mask keeps
    the divergence within the margin (``None`` otherwise); ``delivered_divergence``: with
    ``delivered_constraint``, that mask's divergence, with gradient (``None`` otherwise).
    """

    l0: torch.Tensor
    divergence: torch.Tensor
    within_margin: torch.Tensor
    agreement: torch.Tensor
    original: torch.Tensor
    masked: torch.Tensor
    gates: torch.Tensor
    probe: ProbeOutput
    scorable: torch.Tensor
    delivered_within_margin: torch.Tensor | None = None
    delivered_divergence: torch.Tensor | None = None


def _rows(context: Context, rows: torch.Tensor, batch: int) -> Context:
    """``context`` restricted to the examples ``rows``: every tensor whose first dimension is
    the batch's is indexed, anything else kept."""
    return {
        k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and len(v) == batch else v
        for k, v in context.items()
    }


class _OpeningOnly(torch.autograd.Function):
    """Identity whose backward keeps the gradient's negative part only: in descent, a push
    that raises the gate logits behind it (opens gates), never one that lowers them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(max=0.0)


class DIFFMASK(nn.Module):
    """Differentiable masking for one explained model.

    Args:
        model: an NRMS recommender, a ``transformers`` sequence classifier, or an
            :class:`~attribution_analysis.methods.explained_model.ExplainedModel`.
        hidden_dim: the explained model's hidden size (checked; inferred when ``None``).
        special_token_ids: ids never masked nor scored (e.g. [CLS], [SEP]).
        mask_token_id, pad_token_id: used to initialise the baseline.
        Every other keyword is a field of one of the config sections
        :class:`~attribution_analysis.config.ProbeConfig`,
        :class:`~attribution_analysis.config.GateConfig` and
        :class:`~attribution_analysis.config.ObjectiveConfig`, which document it and hold its
        default (:meth:`from_config` builds a DIFFMASK from a ``DiffMaskConfig``).
    """

    def __init__(
        self,
        model: nn.Module | ExplainedModel,
        hidden_dim: int | None = None,
        num_probe_layers: int | None = _PROBE.num_probe_layers,
        probe_type: str = _PROBE.probe_type,
        constraint_margin: float = _OBJECTIVE.constraint_margin,
        temperature: float = _GATES.temperature,
        stretch: float = _GATES.stretch,
        divergence: str | None = _OBJECTIVE.divergence,
        baseline_init: str = _GATES.baseline_init,
        learn_baseline: bool = _GATES.learn_baseline,
        readout: str = _GATES.readout,
        mask_layer: int = _GATES.mask_layer,
        probe_layer: int | None = _PROBE.probe_layer,
        special_token_ids: Sequence[int] = (),
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        lambda_init: float = _OBJECTIVE.lambda_init,
        lambda_max: float = _OBJECTIVE.lambda_max,
        lambda_min: float = _OBJECTIVE.lambda_min,
        probe_hidden_dim: int | None = _PROBE.probe_hidden_dim,
        probe_init_bias: float = _PROBE.probe_init_bias,
        constraint: str = _OBJECTIVE.constraint,
        within_margin_goal: float = _OBJECTIVE.within_margin_goal,
        hinge_ratio: float = _OBJECTIVE.hinge_ratio,
        sparsity_loss: str = _OBJECTIVE.sparsity_loss,
        logit_decay: float = _OBJECTIVE.logit_decay,
        delivered_check_examples: int | None = _OBJECTIVE.delivered_check_examples,
        delivered_constraint: bool = _OBJECTIVE.delivered_constraint,
        probe_context: str = _PROBE.probe_context,
        delivered_gradient: str = _OBJECTIVE.delivered_gradient,
    ) -> None:
        super().__init__()
        adapter = make_adapter(model)
        object.__setattr__(self, "adapter", adapter)  # never registered as a submodule
        if hidden_dim is not None and hidden_dim != adapter.hidden_size:
            raise ValueError(
                f"hidden_dim={hidden_dim} but the explained model's hidden size is "
                f"{adapter.hidden_size}"
            )
        hidden_dim = adapter.hidden_size
        self._check_choices(probe_type, readout, baseline_init, mask_layer, adapter)
        divergence = adapter.check_divergence(divergence or adapter.default_divergence)
        probe_context = self._resolve_probe_context(probe_context, adapter)
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if sparsity_loss not in SPARSITY_LOSSES:
            raise ValueError(
                f"sparsity_loss must be one of {SPARSITY_LOSSES}, got {sparsity_loss!r}"
            )
        if not (logit_decay >= 0 and math.isfinite(logit_decay)):
            raise ValueError(f"logit_decay must be a finite number >= 0, got {logit_decay}")
        if delivered_check_examples is not None and delivered_check_examples < 1:
            raise ValueError(
                f"delivered_check_examples must be >= 1 or None, got {delivered_check_examples}"
            )
        if delivered_constraint and delivered_check_examples is not None:
            raise ValueError(
                "delivered_check_examples applies only with delivered_constraint=False (the "
                "delivered-mask hinge needs every example of the batch)"
            )
        if delivered_gradient not in DELIVERED_GRADIENTS:
            raise ValueError(
                f"delivered_gradient must be one of {DELIVERED_GRADIENTS}, "
                f"got {delivered_gradient!r}"
            )
        if not 0 < within_margin_goal <= 1:
            raise ValueError(f"within_margin_goal must be in (0, 1], got {within_margin_goal}")
        if not 0 < hinge_ratio <= 1:
            raise ValueError(f"hinge_ratio must be in (0, 1], got {hinge_ratio}")
        if not (constraint_margin > 0 and math.isfinite(constraint_margin)):
            raise ValueError(f"constraint_margin must be > 0, got {constraint_margin}")
        if not 0 <= lambda_min <= lambda_init <= lambda_max:
            raise ValueError(
                "need 0 <= lambda_min <= lambda_init <= lambda_max, got "
                f"{lambda_min}, {lambda_init}, {lambda_max}"
            )
        self.settings = {
            "hidden_dim": hidden_dim,
            "num_probe_layers": num_probe_layers,
            "probe_type": probe_type,
            "constraint_margin": float(constraint_margin),
            "temperature": float(temperature),
            "stretch": float(stretch),
            "divergence": divergence,
            "baseline_init": baseline_init,
            "learn_baseline": learn_baseline,
            "readout": readout,
            "mask_layer": mask_layer,
            "probe_layer": probe_layer,
            "special_token_ids": sorted(int(i) for i in special_token_ids),
            "mask_token_id": mask_token_id,
            "pad_token_id": pad_token_id,
            "lambda_init": float(lambda_init),
            "lambda_max": float(lambda_max),
            "lambda_min": float(lambda_min),
            "probe_hidden_dim": probe_hidden_dim,
            "probe_init_bias": float(probe_init_bias),
            "constraint": constraint,
            "within_margin_goal": float(within_margin_goal),
            "hinge_ratio": float(hinge_ratio),
            "sparsity_loss": sparsity_loss,
            "logit_decay": float(logit_decay),
            "delivered_check_examples": delivered_check_examples,
            "delivered_constraint": bool(delivered_constraint),
            "probe_context": probe_context,
            "delivered_gradient": delivered_gradient,
            "explained_model": adapter.name,
        }
        self.gates = StochasticGates(temperature=temperature, stretch=stretch)
        self.probe = self._build_probe(adapter, probe_hidden_dim)
        self.baseline = nn.Parameter(self._initial_baseline(adapter), requires_grad=learn_baseline)
        self.lagrange_multiplier = nn.Parameter(torch.tensor(float(lambda_init)))
        self.register_buffer("_special_ids", torch.tensor(self.settings["special_token_ids"]))
        self.margin = float(constraint_margin)
        self.divergence_kind = divergence

    @staticmethod
    def _check_choices(probe_type, readout, baseline_init, mask_layer, adapter) -> None:
        for name, value, valid in (
            ("probe_type", probe_type, PROBE_TYPES),
            ("readout", readout, READOUTS),
            ("baseline_init", baseline_init, BASELINE_INITS),
        ):
            if value not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        if not 0 <= mask_layer <= adapter.num_layers:
            raise ValueError(f"mask_layer must be in [0, {adapter.num_layers}], got {mask_layer}")

    @staticmethod
    def _resolve_probe_context(probe_context: str, adapter: ExplainedModel) -> str:
        """``"auto"`` becomes ``"user"`` for a model with a per-example context vector (NRMS:
        an explanation of a (user, candidate) decision) and ``"none"`` otherwise; ``"user"`` is
        refused for a model without one."""
        if probe_context not in PROBE_CONTEXTS:
            raise ValueError(
                f"probe_context must be one of {PROBE_CONTEXTS}, got {probe_context!r}"
            )
        if probe_context == "user" and adapter.context_vector_size == 0:
            raise ValueError(
                f"probe_context='user' needs a model with a per-example context vector (NRMS's "
                f"user vector); the explained model ({adapter.name}) has none"
            )
        if probe_context == "auto":
            return "user" if adapter.context_vector_size > 0 else "none"
        return probe_context

    def _build_probe(self, adapter: ExplainedModel, probe_hidden_dim: int | None) -> nn.Module:
        s = self.settings
        kwargs = {"init_bias": s["probe_init_bias"]}
        if s["probe_context"] == "user":
            kwargs["context_dim"] = adapter.context_vector_size
        if probe_hidden_dim:
            kwargs["width"] = probe_hidden_dim
        if s["probe_type"] == "simple":
            layer = s["probe_layer"]
            if layer is None:
                layer = s["mask_layer"] if s["mask_layer"] > 0 else adapter.num_layers
            if not 0 <= layer <= adapter.num_layers:
                raise ValueError(f"probe_layer must be in [0, {adapter.num_layers}], got {layer}")
            if s["mask_layer"] > 0 and layer > s["mask_layer"]:
                raise ValueError("a probe may not read a layer above the masked one")
            s["probe_layer"] = layer
            return SimpleProbeNetwork(s["hidden_dim"], layer=layer, gates=self.gates, **kwargs)
        n = s["num_probe_layers"] or (
            s["mask_layer"] + 1 if s["mask_layer"] > 0 else adapter.num_layers + 1
        )
        if not 1 <= n <= adapter.num_layers + 1:
            raise ValueError(f"num_probe_layers must be in [1, {adapter.num_layers + 1}], got {n}")
        if s["mask_layer"] > 0 and n > s["mask_layer"] + 1:
            raise ValueError(
                f"masking layer {s['mask_layer']}: num_probe_layers must be <= "
                f"{s['mask_layer'] + 1} (no probe may read a layer above the masked one)"
            )
        s["num_probe_layers"] = n
        return ProbeNetwork(s["hidden_dim"], n, gates=self.gates, **kwargs)

    def _initial_baseline(self, adapter: ExplainedModel) -> torch.Tensor:
        s = self.settings
        device = next(adapter.model.parameters()).device
        token = {"mask": s["mask_token_id"], "pad": s["pad_token_id"], "zeros": None}[
            s["baseline_init"]
        ]
        if s["mask_layer"] > 0 or token is None:
            s["baseline_used"] = "zeros"
            return torch.zeros(s["hidden_dim"], device=device)
        s["baseline_used"] = f"{s['baseline_init']} token embedding (id {token})"
        with torch.no_grad():
            return adapter.embed(torch.tensor([[token]], device=device))[0, 0].detach().clone()

    # ------------------------------------------------------------------ core
    def scorable_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokens that may be masked and are scored: real (non-padding), non-special.
        ``[batch, tokens]`` bool."""
        return scorable_mask(input_ids, attention_mask, self._special_ids)

    def _probe_context(self, context: Context) -> torch.Tensor | None:
        """The context vector the probe reads, ``[batch, dim]`` (``None`` unless
        ``probe_context="user"``); ``context`` is prepared."""
        if self.settings["probe_context"] != "user":
            return None
        return self.adapter.context_vector(context).detach()

    def _probe(self, hidden_states, scorable, context: Context, generator=None) -> ProbeOutput:
        vector = self._probe_context(context)
        if isinstance(self.probe, ProbeNetwork):
            max_layer = self.settings["mask_layer"] if self.settings["mask_layer"] > 0 else None
            return self.probe(
                hidden_states, scorable, self.gates, max_layer, generator=generator, context=vector
            )
        return self.probe(hidden_states, scorable, self.gates, generator=generator, context=vector)

    def _gate(self, gates: torch.Tensor):
        baseline = self.baseline

        def apply(x: torch.Tensor) -> torch.Tensor:
            z = gates.to(x.dtype)[..., None]
            return z * x + (1 - z) * baseline.to(x.dtype)

        return apply

    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        generator: torch.Generator | None = None,
        original: ModelOutput | None = None,
    ) -> DiffMaskStep:
        """One masked pass: the original forward (no gradient, hidden states; ``original`` when
        given, e.g. from an :class:`~.original_cache.OriginalPassCache`), the probe's gates
        (sampled in train mode, deterministic in eval mode), the masked forward and per-example
        L0 and divergence."""
        adapter = self.adapter
        context = adapter.prepare_context(context)
        scorable = self.scorable_mask(input_ids, attention_mask)
        with torch.no_grad():
            words = adapter.embed(input_ids)
        if original is None:
            original = self.original_pass(input_ids, attention_mask, context)
        hidden = tuple(h.detach() for h in original.hidden_states)
        probe = self._probe(hidden, scorable, context, generator)
        kind = self.divergence_kind
        delivered = delivered_div = None
        if self._hinge_only_gradient():
            gate_sets = [probe.gates]
            if self.settings.get("delivered_constraint"):  # the delivered mask's pass with it
                gate_sets.append(self._deterministic_gates(probe.log_alpha, scorable, grad=True))
            passes = self._hinged_divergences(
                words, attention_mask, context, gate_sets, original.output
            )
            div, masked_output = passes[0]
            if len(passes) > 1:
                delivered_div = passes[1][0]
        else:
            masked_output = self._masked_forward(words, attention_mask, context, probe.gates).output
            div = adapter.divergence(original.output, masked_output, context, kind)
        n_tokens = scorable.sum(-1).clamp(min=1)
        l0 = (probe.log_prob_nonzero.exp() * scorable).sum(-1) / n_tokens
        if self.training and self.settings["constraint"] == "per_example":
            if self.settings.get("delivered_constraint"):
                if delivered_div is None:
                    delivered_div = self._delivered_divergence(
                        words, attention_mask, context, probe.log_alpha, scorable, original.output
                    )
                delivered = (delivered_div <= self.margin).detach()
            else:
                delivered = self._delivered_within_margin(
                    words, attention_mask, context, probe.log_alpha, scorable, original.output
                )
        return DiffMaskStep(
            l0=l0,
            divergence=div,
            within_margin=div <= self.margin,
            agreement=adapter.agreement(original.output, masked_output, context, kind),
            original=original.output,
            masked=masked_output,
            gates=probe.gates,
            probe=probe,
            scorable=scorable,
            delivered_within_margin=delivered,
            delivered_divergence=delivered_div,
        )

    def _delivered_divergence(self, words, attention_mask, context, log_alpha, scorable, orig):
        """The divergence of the explanation delivered (deterministic gates) for every example
        of the batch, ``[batch]``, with gradient to the probe (through the deterministic gates,
        alive where they are not clamped at 0 or 1) and to the baseline."""
        gates = self._deterministic_gates(log_alpha, scorable, grad=True)
        out = self._masked_forward(words, attention_mask, context, gates).output
        return self.adapter.divergence(orig, out, context, self.divergence_kind)

    @property
    def hinge_margin(self) -> float:
        """Where the per-example hinge starts pushing: ``hinge_ratio * margin``."""
        return self.margin * self.settings["hinge_ratio"]

    def _hinge_only_gradient(self) -> bool:
        """Whether a training step's divergences enter the loss only through the hinge
        ``max(D_i - h, 0)``, ``h = hinge_ratio * m`` (the ``per_example`` constraint, with
        gradients enabled)."""
        return (
            self.training
            and self.settings["constraint"] == "per_example"
            and torch.is_grad_enabled()
        )

    def _hinged_divergences(
        self,
        words: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        gate_sets: list[torch.Tensor],
        orig: torch.Tensor,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each of the ``gate_sets`` (each ``[batch, tokens]``; e.g. the sampled and the
        delivered mask) the per-example divergence ``[batch]``, with the gradient the hinge
        ``max(D_i - h, 0)`` needs (``h = hinge_ratio * m``, :attr:`hinge_margin`), and the masked
        output ``[batch]`` (without gradient).

        The hinge is flat where ``D_i < h``, so only the examples at or beyond it pass
        a gradient to the probe and the baseline. Every set's masked pass runs in one batch
        without gradient, then again, with gradient, for the rows at or beyond the hinge only
        (most of a batch lies inside it once training has settled): the loss's gradient is the
        full pass's, up to float rounding, for a forward pass without autograd plus a small
        one with it. Where no row reaches the hinge the result is still connected to the gates
        and the baseline (with zero gradient), so every parameter keeps a gradient as before.
        """
        kind = self.divergence_kind
        batch = len(words)
        gates = torch.cat(gate_sets)  # [sets * batch, tokens]
        example = torch.arange(batch, device=words.device).repeat(len(gate_sets))  # [rows]
        if len(gate_sets) > 1:
            words, attention_mask, orig = words[example], attention_mask[example], orig[example]
            context = _rows(context, example, batch)
        with torch.no_grad():
            out = self._masked_forward(words, attention_mask, context, gates.detach()).output
            div = self.adapter.divergence(orig, out, context, kind)
        hinged = (div >= self.hinge_margin).nonzero().squeeze(-1)  # [rows at/beyond the hinge]
        if len(hinged) == 0:
            div = div + 0.0 * (gates.sum() + self.baseline.sum())
        else:
            sub = _rows(context, hinged, len(div))
            sub_out = self._masked_forward(
                words[hinged], attention_mask[hinged], sub, gates[hinged]
            )
            sub_div = self.adapter.divergence(orig[hinged], sub_out.output, sub, kind)
            div = div.index_put((hinged,), sub_div)
        return list(zip(div.split(batch), out.split(batch)))

    @torch.no_grad()
    def _delivered_within_margin(self, words, attention_mask, context, log_alpha, scorable, orig):
        """Whether the explanation delivered (deterministic gates) keeps each of the first
        ``delivered_check_examples`` examples within the margin, ``[checked]`` bool. The batch
        is shuffled, so these are a random subset: the share outside the margin that drives
        lambda is estimated without bias at a fraction of a forward pass."""
        n = self.settings["delivered_check_examples"] or len(words)
        n = min(n, len(words))
        log_alpha = log_alpha if log_alpha.dim() == 3 else log_alpha[None]
        gates = self._deterministic_gates(log_alpha[:, :n], scorable[:n])
        ctx = _rows(context, torch.arange(n, device=words.device), len(words))
        out = self._masked_forward(words[:n], attention_mask[:n], ctx, gates).output
        return self.adapter.divergence(orig[:n], out, ctx, self.divergence_kind) <= self.margin

    @torch.no_grad()
    def original_pass(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: Context
    ) -> ModelOutput:
        """The explained model on the unmasked input, without gradient: ``output`` and
        ``hidden_states`` (embedding output + every layer, each ``[batch, tokens, hidden]``)."""
        adapter = self.adapter
        words = adapter.embed(input_ids)
        context = adapter.prepare_context(context)
        return adapter.forward(words, attention_mask, context, output_hidden_states=True)

    def _masked_forward(self, words, attention_mask, context: Context, gates: torch.Tensor):
        """The explained model with ``gates [batch, tokens]`` applied at the masked layer."""
        layer = self.settings["mask_layer"]
        if layer == 0:
            return self.adapter.forward(self._gate(gates)(words), attention_mask, context)
        return self.adapter.forward(words, attention_mask, context, edit={layer: self._gate(gates)})

    def _deterministic_gates(
        self, log_alpha: torch.Tensor, scorable: torch.Tensor, grad: bool = False
    ) -> torch.Tensor:
        """Test-time gates ``[batch, tokens]`` (product over probes; 1 where not scorable);
        with gradient to ``log_alpha`` only when ``grad``.

        With ``delivered_gradient="straight_through"`` the values and the exact gradient are
        the same, plus a straight-through push that can only open: where a voting probe's own
        gate is clamped at 0, the token's gate gradient reaches that probe's ``log_alpha``
        times ``(zeta - gamma) / 4`` (the slope at ``log_alpha = 0``), its opening part only.
        Through the exact product alone, a token that one probe has closed (``log_alpha`` far
        below 0) passes no gradient to any probe, so the hinge cannot reopen it however far
        outside the margin its example lies. The push neither reaches open gates nor closes
        gates further: either drives logits without bound (measured on a frozen-encoder
        recommender: a push on every probe left 86-91% of the gates saturated, |log_alpha| up
        to 166; one on closed probes in both directions drove them down to -118).
        """
        log_alpha = log_alpha if log_alpha.dim() == 3 else log_alpha[None]
        own = self.gates.distribution(log_alpha if grad else log_alpha.detach()).deterministic()
        gates = own.prod(0)  # as _deterministic_product, keeping each probe's own gate
        if grad and self.settings["delivered_gradient"] == "straight_through":
            closed = own.detach() == 0
            slope = (self.gates.zeta - self.gates.gamma) / 4
            push = (log_alpha * closed.to(log_alpha.dtype)).sum(0) * slope  # [batch, tokens]
            gates = gates + (_OpeningOnly.apply(push) - push.detach())
        return torch.where(scorable, gates, torch.ones_like(gates))

    def _deterministic_product(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Test-time gate of the vote ``[batch, tokens]`` from ``[n_probes, batch, tokens]``."""
        return self.gates.distribution(log_alpha).deterministic().prod(0)

    def lagrangian(self, step: DiffMaskStep) -> torch.Tensor:
        """The loss minimised by probe and baseline (D is computed per example):
        ``sparsity + lambda * constraint + logit_penalty`` with

        * ``sparsity``: :meth:`sparsity_term` (``l0``: mean P(z != 0); ``log_l0``: mean log);
        * ``constraint="per_example"`` (default): ``mean_i max(D_i - h, 0)`` with ``h =
          hinge_ratio * m`` (0.8 m by default); only examples beyond ``h`` push the gates
          open, so the constraint is met example by example rather than on average; with
          ``delivered_constraint`` (default) plus
          ``mean_i max(D'_i - h, 0)``, ``D'`` the divergence of the delivered (deterministic)
          mask, the one lambda's dual signal counts: an example whose sampled masks stay
          within the margin but whose delivered mask does not is pushed too;
        * ``constraint="mean"`` (the original DIFFMASK form): ``mean(D - m)``;
        * ``logit_penalty``: :meth:`logit_penalty` (keeps gate logits where gradients live).
        """
        if self.settings["constraint"] == "per_example":
            excess = (step.divergence - self.hinge_margin).clamp(min=0.0)
            if step.delivered_divergence is not None:
                excess = excess + (step.delivered_divergence - self.hinge_margin).clamp(min=0.0)
        else:
            excess = step.divergence - self.margin
        return (
            self.sparsity_term(step)
            + self.lagrange_multiplier * excess.mean()
            + self.logit_penalty(step)
        )

    def sparsity_term(self, step: DiffMaskStep) -> torch.Tensor:
        """The sparsity term of the loss, a scalar: the mean over examples of the mean over
        their scorable tokens of ``P(z != 0)`` (``sparsity_loss="l0"``, the expected share of
        kept tokens) or of ``log P(z != 0)`` (``"log_l0"``, the original code's form, whose
        gradient does not fade as a gate closes)."""
        log_prob = step.probe.log_prob_nonzero
        per_token = log_prob.exp() if self.settings["sparsity_loss"] == "l0" else log_prob
        n_tokens = step.scorable.sum(-1).clamp(min=1)
        return ((per_token * step.scorable).sum(-1) / n_tokens).mean()

    def logit_penalty(self, step: DiffMaskStep) -> torch.Tensor:
        """``logit_decay * mean(log_alpha^2)`` over scorable tokens (and probes), a scalar.

        Keeps every gate logit where its gradients are alive: a gate that a large lambda drove
        far open (``log_alpha >> 0``, where the sampled gate sits at exactly 1 and the
        sparsity gradient ``P (1 - P)`` vanishes) is pulled back, so it closes again when lambda
        falls. Small enough (default 1e-3) not to move gates the objective needs: its pull at
        ``log_alpha = 5`` is 0.01.
        """
        decay = self.settings["logit_decay"]
        if decay == 0:
            return step.l0.new_zeros(())
        log_alpha = step.probe.log_alpha
        scorable = step.scorable.expand_as(log_alpha).to(log_alpha.dtype)
        return decay * (log_alpha.pow(2) * scorable).sum() / scorable.sum().clamp(min=1)

    def saturated_share(self, step: DiffMaskStep, threshold: float = SATURATION) -> float:
        """Share of the probes' scorable gates (every probe of the vote, every scorable token)
        that are saturated: their sampled gate passes a gradient to ``log_alpha`` with
        probability ``P(0 < z < 1)`` below ``threshold`` (``|log_alpha|`` beyond about 8.5
        with the default gates), so no sampled mask moves them. A training health signal,
        reported per epoch; a few percent is normal, most gates saturated is not."""
        log_alpha = step.probe.log_alpha.detach()
        scorable = step.scorable.expand_as(log_alpha)
        alive = self.gates.distribution(log_alpha).prob_gradient()
        return float((alive[scorable] < threshold).float().mean()) if scorable.any() else 0.0

    def dual_signal(self, step: DiffMaskStep) -> torch.Tensor:
        """The ascent direction of lambda (its "gradient").

        ``mean``: ``mean(D - m)``, the gradient of :meth:`lagrangian` in lambda.
        ``per_example``: ``share(D_i > m) - (1 - within_margin_goal)``, dual ascent on the
        chance constraint "at least ``within_margin_goal`` of the examples lie within the
        margin": lambda grows while too many examples are outside and shrinks otherwise. The
        share is that of the explanation delivered (deterministic gates, computed in training
        steps without gradient), not of the sampled gates: sampled masks violate the margin
        more often, and a dual driven by them keeps climbing after the delivered masks meet
        the goal.
        """
        if self.settings["constraint"] == "per_example":
            within = step.delivered_within_margin
            within = step.within_margin if within is None else within
            violating = (~within).float().mean()
            return violating - (1.0 - self.settings["within_margin_goal"])
        return (step.divergence - self.margin).mean().detach()

    def clamp_multiplier(self, floor: bool = True) -> None:
        """Keep lambda in ``[lambda_min, lambda_max]`` (``[0, lambda_max]`` when ``floor`` is
        false); bounded, never an unbounded exp.

        The floor ``lambda_min`` (default 1) keeps the constraint term pulling on examples
        outside the margin when the constraint is slack: a multiplier that falls to 0 leaves
        sparsity alone, which closes decisive gates until examples leave the margin, lambda
        rises and reopens them, a cycle that never levels off. Under the per-example (hinge)
        constraint the floor acts only on examples outside the margin. ``train_diffmask``
        applies it once lambda has first risen above it (the constraint has bound): before,
        lambda may fall to 0 so that sparsity alone prunes the gates from fully open (a floor
        from the first step held every gate open on a small classifier and made lambda creep
        for 12+ epochs on the news task).
        """
        low = self.settings.get("lambda_min", 0.0) if floor else 0.0
        with torch.no_grad():
            self.lagrange_multiplier.clamp_(low, self.settings["lambda_max"])

    @torch.no_grad()
    def get_attributions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history_emb: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        readout: str | None = None,
        hidden_states: tuple[torch.Tensor, ...] | None = None,
        **context: torch.Tensor,
    ) -> torch.Tensor:
        """Per-token attributions ``[batch, tokens]`` (0 on padding and special tokens).

        One forward pass of the explained model up to its hidden states (for the recommender:
        the PLM only, not the news encoder's head; the user vector only when the probe reads
        it, ``probe_context="user"``) plus the probe; ``hidden_states`` (embedding output and
        every layer, each ``[batch, tokens, hidden]``, of the unmasked input in eval mode)
        skips that pass when the caller already ran it.
        ``history_emb [batch, history, dim]`` (and ``history_mask``) are the recommender's
        context; omit them for a classifier.
        """
        readout = readout or self.settings["readout"]
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        ctx = self._context(history_emb, history_mask, context)
        adapter = self.adapter
        with eval_mode(adapter.model):  # dropout off: attributions are deterministic
            hidden = hidden_states
            if hidden is None:
                hidden = adapter.hidden_states(adapter.embed(input_ids), attention_mask, ctx)
            if self.settings["probe_context"] == "user":
                ctx = adapter.prepare_context(ctx)
        scorable = self.scorable_mask(input_ids, attention_mask)
        return self._readout(self._log_alpha(hidden, ctx), scorable, readout)

    def _log_alpha(self, hidden_states, context: Context) -> torch.Tensor:
        """Gate locations of every voting probe ``[n_probes, batch, tokens]``; ``context``
        prepared when the probe reads a context vector."""
        vector = self._probe_context(context)
        if isinstance(self.probe, ProbeNetwork):
            max_layer = self.settings["mask_layer"] if self.settings["mask_layer"] > 0 else None
            return self.probe.log_alpha(hidden_states, max_layer, vector)
        return self.probe.log_alpha(hidden_states, vector)[None]

    def _readout(self, log_alpha: torch.Tensor, scorable: torch.Tensor, readout: str):
        """Scores ``[batch, tokens]`` from ``log_alpha [n_probes, batch, tokens]``."""
        if readout == "keep_probability":
            scores = self.gates.log_prob_nonzero(log_alpha).sum(0).exp()
        elif readout == "sigmoid":
            scores = torch.sigmoid(log_alpha).prod(0)
        else:
            scores = self._deterministic_product(log_alpha)
        return scores.float() * scorable

    @staticmethod
    def _context(history_emb, history_mask, extra) -> Context:
        ctx = dict(extra)
        if history_emb is not None:
            ctx["history_emb"] = history_emb
            if history_mask is not None:
                ctx["history_mask"] = history_mask
        return ctx

    @classmethod
    def from_config(
        cls,
        model: nn.Module | ExplainedModel,
        config: DiffMaskConfig | None = None,
        tokenizer=None,
    ) -> DIFFMASK:
        """A DIFFMASK with the probe, gate and objective sections of ``config`` (the library
        defaults when ``None``); ``tokenizer`` (a ``transformers`` tokenizer) supplies the
        special, [MASK] and padding token ids."""
        kwargs = (config or DiffMaskConfig()).constructor_kwargs()
        if tokenizer is not None:
            kwargs.update(
                special_token_ids=tokenizer.all_special_ids,
                mask_token_id=tokenizer.mask_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        return cls(model, **kwargs)

    @staticmethod
    def constructor_settings(settings: dict) -> dict:
        """The constructor arguments among ``settings`` (a ``DIFFMASK.settings`` dict)."""
        return {k: v for k, v in settings.items() if k not in NON_CONSTRUCTOR_SETTINGS}

    def metadata(self) -> dict:
        """Settings, lambda and versions, recorded in every result."""
        return {
            "method": "diffmask",
            "settings": dict(self.settings),
            "lambda": float(self.lagrange_multiplier.detach()),
            "versions": library_versions(),
        }

    @torch.no_grad()
    def explain(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        tokenizer=None,
        ids: list[dict] | None = None,
        word_aggregation: str = "max",
        readout: str | None = None,
    ) -> list[AttributionResult]:
        """Full results for a batch: scores, tokens, words, original and masked (deterministic
        gates) outputs and divergence. Costs two forward passes (the masked output needs one)."""
        with eval_mode(self, self.adapter.model):
            t0 = time.perf_counter()
            step = self.step(input_ids, attention_mask, context)
            ctx = self.adapter.prepare_context(context)
            scorable = self.scorable_mask(input_ids, attention_mask)
            log_alpha = step.probe.log_alpha
            log_alpha = log_alpha if log_alpha.dim() == 3 else log_alpha[None]
            scores = self._readout(log_alpha, scorable, readout or self.settings["readout"])
            orig = self.adapter.explained_output(step.original, ctx)
            masked = self.adapter.explained_output(step.masked, ctx)
            seconds = (time.perf_counter() - t0) / len(input_ids)
        meta = {**self.metadata(), "word_aggregation": word_aggregation, "seconds": seconds}
        return build_results(
            "diffmask",
            input_ids,
            attention_mask,
            scores,
            scorable,
            tokenizer,
            ids,
            word_aggregation,
            meta,
            original=orig,
            masked=masked,
            divergence=step.divergence,
        )
