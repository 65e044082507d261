"""Probe networks that predict DIFFMASK gate locations ``log_alpha`` from hidden states.

Two variants:

* :class:`SimpleProbeNetwork` reads a single hidden state (e.g. the last layer's). Cheap, but it
  sees every layer's computation, so it can explain with "hindsight".
* :class:`ProbeNetwork` is the layer vote of DIFFMASK (De Cao et al., EMNLP 2020,
  arXiv:2004.14992): probe ``k`` reads ``[h(0); h(k)]``, one Hard Concrete gate is sampled per
  probe and the gates are multiplied, so a token is kept only if every probe keeps it. Their
  ``log P(z != 0)`` values are summed (independent gates), so the keep probability of the product
  is the product of the per-probe keep probabilities.

Hidden states follow the Hugging Face convention of ``output_hidden_states=True``: index 0 is the
embedding output and index ``k`` the output of transformer layer ``k``; each is
``[batch, tokens, hidden_dim]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .stochastic_gates import StochasticGates

__all__ = ["ProbeLayer", "ProbeNetwork", "ProbeOutput", "SimpleProbeNetwork"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class ProbeOutput:
    """Result of a probe network forward pass.

    Attributes:
        gates: ``[batch, tokens]`` gate values in ``[0, 1]`` (product over probes for the vote);
            exactly 1 at padding.
        log_prob_nonzero: ``[batch, tokens]`` ``log P(z != 0)`` of the (product) gate, i.e. the
            sum over probes; exactly 0 at padding.
        log_alpha: ``[batch, tokens]`` for a simple probe, ``[n_probes, batch, tokens]`` for the
            layer vote.
    """

    gates: Tensor
    log_prob_nonzero: Tensor
    log_alpha: Tensor


class ProbeLayer(nn.Module):
    """Two-layer MLP mapping ``[batch, tokens, input_dim]`` to gate logits ``[batch, tokens]``.

    ``log_alpha = w2 . act(W1 x + b1) + bias`` with an **unbounded** output layer. The last
    linear layer starts at zero, so every initial logit equals ``init_bias`` (at 3, every gate
    starts open: ``P(z != 0) ~ 0.99`` with the default gates).

    There is deliberately no ``tanh`` bound on the output: in float32 ``tanh`` is exactly +-1
    beyond ``|x| ~ 9`` and its gradient exactly 0, so a probe pushed there by a large Lagrange
    multiplier can never move again (a "dead" gate). Logits are instead kept in a range where
    gradients flow by the objective's ``logit_decay`` term (see ``DIFFMASK.lagrangian``).

    Args:
        input_dim: feature size of the input.
        width: MLP width (hidden units); default ``max(input_dim // 2, 16)``.
        init_bias: initial value of every logit.
        activation: ``"gelu"`` or ``"tanh"`` (hidden layer only).
    """

    def __init__(
        self,
        input_dim: int,
        width: int | None = None,
        init_bias: float = 3.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        width = max(input_dim // 2, 16) if width is None else width
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.input_dim = input_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, width),
            _ACTIVATIONS[activation](),
            nn.Linear(width, 1),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, tokens, input_dim]`` -> logits ``log_alpha`` ``[batch, tokens]``."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"ProbeLayer expects last dim {self.input_dim}, got {tuple(x.shape)}")
        return self.mlp(self.norm(x)).squeeze(-1) + self.bias


def _keep_probability(log_prob_nonzero: Tensor, mask: Tensor) -> Tensor:
    """``exp(log_prob_nonzero)`` ``[batch, tokens]`` with exact zeros where ``mask`` is False."""
    keep = mask.to(device=log_prob_nonzero.device, dtype=torch.bool)
    return torch.where(keep, log_prob_nonzero.exp(), torch.zeros_like(log_prob_nonzero))


def _with_context(
    features: Tensor, context: Tensor | None, context_dim: int, norm: nn.Module | None
) -> Tensor:
    """``features [batch, tokens, f]`` -> ``[batch, tokens, f + context_dim]``: each token's
    features followed by its example's normalised context vector ``[batch, context_dim]``
    (unchanged when ``context_dim`` is 0)."""
    if context_dim == 0:
        if context is not None:
            raise ValueError("this probe reads no context vector, but one was given")
        return features
    if context is None or context.dim() != 2 or context.shape != (len(features), context_dim):
        shape = None if context is None else tuple(context.shape)
        raise ValueError(
            f"this probe reads a context vector [batch={len(features)}, {context_dim}], got {shape}"
        )
    ctx = norm(context.to(features.dtype))[:, None, :].expand(-1, features.shape[1], -1)
    return torch.cat([features, ctx], dim=-1)


def _check_hidden(state: Tensor, hidden_dim: int, index: int) -> None:
    """Raise a ValueError unless ``state`` is ``[batch, tokens, hidden_dim]``."""
    if state.dim() != 3 or state.shape[-1] != hidden_dim:
        raise ValueError(
            f"hidden_states[{index}] must be [batch, tokens, {hidden_dim}], "
            f"got {tuple(state.shape)}"
        )


class SimpleProbeNetwork(nn.Module):
    """Predict ``log_alpha`` from one hidden state ``hidden_states[layer]``.

    Args:
        hidden_dim: size of the hidden states.
        layer: index into ``hidden_states`` (default -1, the last layer).
        gates: default :class:`StochasticGates` used when ``forward`` gets none; its temperature
            and limits also define :meth:`keep_probability`.
        context_dim: size of a per-example context vector (e.g. NRMS's user vector) read next
            to each token's state (layer-normalised); 0: none.
        **probe_kwargs: passed to :class:`ProbeLayer`.
    """

    def __init__(
        self,
        hidden_dim: int,
        layer: int = -1,
        *,
        gates: StochasticGates | None = None,
        context_dim: int = 0,
        **probe_kwargs,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.layer = layer
        self.context_dim = context_dim
        self.gates = gates if gates is not None else StochasticGates()
        self.context_norm = nn.LayerNorm(context_dim) if context_dim else None
        self.probe = ProbeLayer(hidden_dim + context_dim, **probe_kwargs)

    def extra_repr(self) -> str:
        return f"hidden_dim={self.hidden_dim}, layer={self.layer}, context_dim={self.context_dim}"

    def log_alpha(self, hidden_states: Sequence[Tensor], context: Tensor | None = None) -> Tensor:
        """Gate locations ``[batch, tokens]`` from ``hidden_states[layer]`` (and ``context``
        ``[batch, context_dim]`` when the probe reads one)."""
        n = len(hidden_states)
        if not -n <= self.layer < n:
            raise ValueError(
                f"SimpleProbeNetwork reads hidden_states[{self.layer}] but only {n} were given"
            )
        state = hidden_states[self.layer]
        _check_hidden(state, self.hidden_dim, self.layer)
        return self.probe(_with_context(state, context, self.context_dim, self.context_norm))

    def forward(
        self,
        hidden_states: Sequence[Tensor],
        mask: Tensor,
        gates: StochasticGates | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> ProbeOutput:
        """Gates for each token.

        Args:
            hidden_states: sequence of ``[batch, tokens, hidden_dim]`` tensors.
            mask: ``[batch, tokens]``, True at real tokens, False at padding.
            gates: gate module (sampling in train mode, deterministic in eval mode); defaults to
                the network's own ``gates``.
            generator: optional random generator for sampling.
            context: ``[batch, context_dim]`` when the probe reads a context vector.

        Returns:
            :class:`ProbeOutput` with ``gates`` and ``log_prob_nonzero`` ``[batch, tokens]``
            (1 and 0 at padding) and ``log_alpha`` ``[batch, tokens]``.
        """
        gate_module = gates if gates is not None else self.gates
        log_alpha = self.log_alpha(hidden_states, context)
        values, log_prob = gate_module(log_alpha, mask, generator=generator)
        return ProbeOutput(gates=values, log_prob_nonzero=log_prob, log_alpha=log_alpha)

    def keep_probability(
        self,
        hidden_states: Sequence[Tensor],
        mask: Tensor,
        gates: StochasticGates | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Closed-form ``P(z != 0)`` ``[batch, tokens]``, exactly 0 at padding."""
        gate_module = gates if gates is not None else self.gates
        log_prob = gate_module.log_prob_nonzero(self.log_alpha(hidden_states, context), mask)
        return _keep_probability(log_prob, mask)


class ProbeNetwork(nn.Module):
    """DIFFMASK layer vote over ``num_probe_layers`` probes.

    Probe ``k`` (``k = 0 .. num_probe_layers - 1``) reads ``concat[h(0); h(k)]``
    (``[batch, tokens, 2 * hidden_dim]``), where ``h(0) = hidden_states[0]`` is the embedding output
    and ``h(k) = hidden_states[k]``. No probe reads a layer above ``num_probe_layers - 1``: when
    masking the input, probes ``0..L-1`` read layers up to ``L-1`` only. For hidden-state
    masking at layer ``l``, pass ``max_layer=l`` so that only probes ``0..l`` (reading layers
    ``<= l``) vote.

    Args:
        hidden_dim: size of each hidden state.
        num_probe_layers: number of probes (and of hidden states needed, embeddings included).
        gates: default :class:`StochasticGates` used when ``forward`` gets none; its temperature
            and limits also define :meth:`keep_probability`.
        context_dim: size of a per-example context vector (e.g. NRMS's user vector) that every
            probe reads next to ``[h(0); h(k)]`` (layer-normalised once); 0: none.
        **probe_kwargs: passed to each :class:`ProbeLayer`.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_probe_layers: int,
        *,
        gates: StochasticGates | None = None,
        context_dim: int = 0,
        **probe_kwargs,
    ) -> None:
        super().__init__()
        if num_probe_layers < 1:
            raise ValueError(f"num_probe_layers must be >= 1, got {num_probe_layers}")
        self.hidden_dim = hidden_dim
        self.num_probe_layers = num_probe_layers
        self.context_dim = context_dim
        self.gates = gates if gates is not None else StochasticGates()
        self.context_norm = nn.LayerNorm(context_dim) if context_dim else None
        self.probes = nn.ModuleList(
            ProbeLayer(2 * hidden_dim + context_dim, **probe_kwargs)
            for _ in range(num_probe_layers)
        )

    def extra_repr(self) -> str:
        return (
            f"hidden_dim={self.hidden_dim}, num_probe_layers={self.num_probe_layers}, "
            f"context_dim={self.context_dim}"
        )

    def _num_probes(self, max_layer: int | None) -> int:
        """Number of voting probes: all of them, or ``0..max_layer``."""
        if max_layer is None:
            return self.num_probe_layers
        if not 0 <= max_layer < self.num_probe_layers:
            raise ValueError(
                f"max_layer must be in [0, {self.num_probe_layers - 1}], got {max_layer}"
            )
        return max_layer + 1

    def log_alpha(
        self,
        hidden_states: Sequence[Tensor],
        max_layer: int | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Per-probe gate locations ``[n_probes, batch, tokens]`` (``context`` ``[batch,
        context_dim]`` when the probes read one).

        Raises:
            ValueError: if fewer than ``n_probes`` hidden states are given or shapes are wrong.
        """
        n_probes = self._num_probes(max_layer)
        if len(hidden_states) < n_probes:
            raise ValueError(
                f"ProbeNetwork needs hidden states 0..{n_probes - 1} ({n_probes} tensors, "
                f"index 0 = embeddings) but got {len(hidden_states)}"
            )
        embeddings = hidden_states[0]
        _check_hidden(embeddings, self.hidden_dim, 0)
        logits = []
        for k in range(n_probes):
            _check_hidden(hidden_states[k], self.hidden_dim, k)
            features = torch.cat([embeddings, hidden_states[k]], dim=-1)
            features = _with_context(features, context, self.context_dim, self.context_norm)
            logits.append(self.probes[k](features))
        return torch.stack(logits, dim=0)

    def forward(
        self,
        hidden_states: Sequence[Tensor],
        mask: Tensor,
        gates: StochasticGates | None = None,
        max_layer: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> ProbeOutput:
        """Product of per-probe gates and sum of per-probe ``log P(z != 0)``.

        Each probe's gate is drawn separately (training mode) or taken deterministically (eval
        mode) and the gate values are multiplied; probabilities are never multiplied in place
        of gates.

        Args:
            hidden_states: sequence of ``[batch, tokens, hidden_dim]``, index 0 = embeddings;
                at least ``n_probes`` of them.
            mask: ``[batch, tokens]``, True at real tokens, False at padding.
            gates: gate module; defaults to the network's own ``gates``.
            max_layer: if given, only probes ``0..max_layer`` vote.
            generator: optional random generator; probes are sampled in order ``0, 1, ...``.
            context: ``[batch, context_dim]`` when the probes read a context vector.

        Returns:
            :class:`ProbeOutput` with ``gates`` and ``log_prob_nonzero`` ``[batch, tokens]``
            (1 and 0 at padding) and ``log_alpha`` ``[n_probes, batch, tokens]``.
        """
        gate_module = gates if gates is not None else self.gates
        log_alpha = self.log_alpha(hidden_states, max_layer, context)
        product: Tensor | None = None
        log_prob_sum: Tensor | None = None
        for probe_log_alpha in log_alpha.unbind(0):
            values, log_prob = gate_module(probe_log_alpha, mask, generator=generator)
            product = values if product is None else product * values
            log_prob_sum = log_prob if log_prob_sum is None else log_prob_sum + log_prob
        return ProbeOutput(gates=product, log_prob_nonzero=log_prob_sum, log_alpha=log_alpha)

    def keep_probability(
        self,
        hidden_states: Sequence[Tensor],
        mask: Tensor,
        gates: StochasticGates | None = None,
        max_layer: int | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Closed-form keep probability of the product gate ``[batch, tokens]``, 0 at padding.

        Equals the product over voting probes of ``P(z_k != 0)``.
        """
        gate_module = gates if gates is not None else self.gates
        log_alpha = self.log_alpha(hidden_states, max_layer, context)
        log_prob = gate_module.log_prob_nonzero(log_alpha, mask).sum(dim=0)
        return _keep_probability(log_prob, mask)
