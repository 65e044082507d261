"""Hard Concrete stochastic gates for DIFFMASK.

The Hard Concrete distribution (Louizos, Welling, Kingma, "Learning Sparse Neural Networks
through L0 Regularization", ICLR 2018, arXiv:1712.01312) is a stretched and clamped binary
Concrete distribution. With ``u ~ Uniform(0, 1)``, temperature ``beta`` and stretch interval
``(gamma, zeta)`` where ``gamma < 0 < 1 <= zeta``::

    s     = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    s_bar = s * (zeta - gamma) + gamma
    z     = clamp(s_bar, 0, 1)

``z`` has a point mass at exactly 0 (because ``gamma < 0``) and, when ``zeta > 1``, a point mass at
exactly 1. The probability that a gate is non-zero has the closed form::

    P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))

which is the expected L0 norm of the gate used as the sparsity term in DIFFMASK (De Cao,
Schlichtkrull, Aziz, Titov, EMNLP 2020, arXiv:2004.14992).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HardConcrete", "StochasticGates"]

DEFAULT_TEMPERATURE = 2.0 / 3.0
DEFAULT_STRETCH = 0.1


def _resolve_limits(stretch: float, limits: tuple[float, float] | None) -> tuple[float, float]:
    """Return ``(gamma, zeta)`` from either ``limits`` or a symmetric ``stretch``."""
    if limits is None:
        if stretch <= 0:
            raise ValueError(f"stretch must be > 0 (gamma = -stretch < 0), got {stretch}")
        return -float(stretch), 1.0 + float(stretch)
    if len(limits) != 2:
        raise ValueError(f"limits must be a pair (gamma, zeta), got {limits!r}")
    gamma, zeta = float(limits[0]), float(limits[1])
    if not gamma < 0.0:
        raise ValueError(f"limits: gamma must be < 0, got gamma={gamma}")
    if not zeta >= 1.0:
        raise ValueError(f"limits: zeta must be >= 1, got zeta={zeta}")
    return gamma, zeta


def _validate_temperature(temperature: float) -> float:
    """Check that the temperature is a positive finite number."""
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute in at least float32 precision (half precision saturates the logistic noise)."""
    return torch.promote_types(dtype, torch.float32)


class HardConcrete:
    """Hard Concrete distribution over gates in ``[0, 1]``, one gate per entry of ``log_alpha``.

    Args:
        log_alpha: location parameters, any shape (typically ``[batch, tokens]``).
        temperature: ``beta > 0``; smaller values give samples closer to {0, 1}.
        stretch: ``s > 0`` giving ``gamma = -s`` and ``zeta = 1 + s`` (ignored if ``limits``
            is given). The default 0.1 with temperature 2/3 are the Louizos et al. defaults.
        limits: explicit ``(gamma, zeta)`` with ``gamma < 0`` and ``zeta >= 1``. The original
            DIFFMASK code used temperature 0.2 and limits ``(-0.2, 1.0)``: gates can be exactly 0
            but never exactly 1.

    When ``zeta == 1`` the distribution has no point mass at 1; samples and deterministic gates
    are then capped at the largest floating-point number below 1 so that float rounding cannot
    create spurious exact ones.
    """

    def __init__(
        self,
        log_alpha: Tensor,
        temperature: float = DEFAULT_TEMPERATURE,
        stretch: float = DEFAULT_STRETCH,
        *,
        limits: tuple[float, float] | None = None,
    ) -> None:
        self.log_alpha = log_alpha
        self.temperature = _validate_temperature(temperature)
        self.gamma, self.zeta = _resolve_limits(stretch, limits)

    def __repr__(self) -> str:
        return (
            f"HardConcrete(shape={tuple(self.log_alpha.shape)}, "
            f"temperature={self.temperature:.4g}, "
            f"limits=({self.gamma:.4g}, {self.zeta:.4g}))"
        )

    def _clamp(self, s_bar: Tensor) -> Tensor:
        """Clamp stretched values to ``[0, 1]`` (``[0, 1)`` when ``zeta == 1``)."""
        if self.zeta > 1.0:
            return s_bar.clamp(0.0, 1.0)
        one = torch.ones((), dtype=s_bar.dtype, device=s_bar.device)
        below_one = torch.nextafter(one, torch.zeros_like(one)).item()
        return s_bar.clamp(0.0, below_one)

    def _stretch(self, s: Tensor) -> Tensor:
        """Map ``s`` in ``(0, 1)`` to ``(gamma, zeta)``; same shape as ``s``."""
        return s * (self.zeta - self.gamma) + self.gamma

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw a reparameterised sample, same shape as ``log_alpha``, values in ``[0, 1]``.

        Gradients flow to ``log_alpha`` wherever the sample lies strictly inside ``(0, 1)``.

        Args:
            generator: optional random generator on any device: the noise is drawn on the
                generator's device and moved to ``log_alpha``'s, so a CPU generator gives the
                same samples whether the gates live on the CPU or a GPU.
        """
        dtype = _compute_dtype(self.log_alpha.dtype)
        log_alpha = self.log_alpha.to(dtype)
        eps = torch.finfo(dtype).eps
        where = generator.device if generator is not None else log_alpha.device
        u = torch.rand(log_alpha.shape, generator=generator, dtype=dtype, device=where)
        u = u.to(log_alpha.device).clamp(eps, 1.0 - eps)
        logistic = torch.log(u) - torch.log1p(-u)
        s = torch.sigmoid((logistic + log_alpha) / self.temperature)
        return self._clamp(self._stretch(s)).to(self.log_alpha.dtype)

    def log_prob_nonzero(self) -> Tensor:
        """``log P(z != 0) = logsigmoid(log_alpha - beta * log(-gamma / zeta))``, same shape."""
        return F.logsigmoid(self.log_alpha - self._nonzero_shift())

    def _nonzero_shift(self) -> float:
        """``beta * log(-gamma / zeta)``: ``P(z != 0) = sigmoid(log_alpha - shift)``."""
        return self.temperature * math.log(-self.gamma / self.zeta)

    def prob_gradient(self) -> Tensor:
        """``P(0 < z < 1)``, the chance that a sample passes a gradient to ``log_alpha`` (it
        lies on the stretched sigmoid, not clamped at 0 or 1); same shape as ``log_alpha``:
        ``P(z != 0) - P(z == 1)``, with ``P(z == 1) = sigmoid(log_alpha - beta *
        log((1 - gamma) / (zeta - 1)))`` (0 when ``zeta == 1``), computed in at least float32.
        A gate where it is about 0 is saturated: no sampled mask moves it."""
        log_alpha = self.log_alpha.to(_compute_dtype(self.log_alpha.dtype))  # bf16: 0 by 7.6
        nonzero = torch.sigmoid(log_alpha - self._nonzero_shift())
        if self.zeta > 1.0:
            shift = self.temperature * math.log((1.0 - self.gamma) / (self.zeta - 1.0))
            at_one = torch.sigmoid(log_alpha - shift)
        else:
            at_one = torch.zeros_like(log_alpha)
        return (nonzero - at_one).clamp(min=0.0)

    def prob_nonzero(self) -> Tensor:
        """``P(z != 0)``, the expected L0 norm of each gate; same shape as ``log_alpha``."""
        return self.log_prob_nonzero().exp()

    def deterministic(self) -> Tensor:
        """Test-time gate ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``."""
        return self._clamp(self._stretch(torch.sigmoid(self.log_alpha)))

    def sigmoid(self) -> Tensor:
        """``sigmoid(log_alpha)``, same shape as ``log_alpha``."""
        return torch.sigmoid(self.log_alpha)


class StochasticGates(nn.Module):
    """Turn per-token ``log_alpha`` into Hard Concrete gates, respecting a padding mask.

    In training mode gates are reparameterised samples; in eval mode they are the deterministic
    gate ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.

    Padding convention: where ``mask`` is False the gate is exactly 1.0 (the position is never
    masked) and its ``log P(z != 0)`` is exactly 0. Padding therefore contributes nothing to the
    L0 penalty only if callers *exclude* it by the mask (average over ``mask`` positions, not over
    all positions), and attribution scores at padding must likewise be ignored using the mask.

    Args:
        temperature: Hard Concrete temperature ``beta > 0``.
        stretch: symmetric stretch (``gamma = -stretch``, ``zeta = 1 + stretch``).
        limits: explicit ``(gamma, zeta)``; overrides ``stretch``.
    """

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        stretch: float = DEFAULT_STRETCH,
        *,
        limits: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _validate_temperature(temperature)
        self.gamma, self.zeta = _resolve_limits(stretch, limits)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, limits=({self.gamma:.4g}, {self.zeta:.4g})"

    def distribution(self, log_alpha: Tensor) -> HardConcrete:
        """Hard Concrete distribution with this module's temperature and limits."""
        return HardConcrete(log_alpha, self.temperature, limits=(self.gamma, self.zeta))

    def log_prob_nonzero(self, log_alpha: Tensor, mask: Tensor | None = None) -> Tensor:
        """Closed-form ``log P(z != 0)`` ``[batch, tokens]``; exactly 0 where ``mask`` is False."""
        log_prob = self.distribution(log_alpha).log_prob_nonzero()
        return _fill_padding(log_prob, mask, 0.0)

    def forward(
        self,
        log_alpha: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Gate values and their ``log P(z != 0)``.

        Args:
            log_alpha: ``[batch, tokens]`` (any shape works) gate locations.
            mask: optional ``[batch, tokens]``, True (or 1) at real tokens, False at padding.
            generator: optional random generator used in training mode.

        Returns:
            ``(gates, log_prob_nonzero)``, both shaped like ``log_alpha``; gates are 1.0 and
            log-probabilities 0.0 at padding.
        """
        dist = self.distribution(log_alpha)
        gates = dist.rsample(generator) if self.training else dist.deterministic()
        log_prob = dist.log_prob_nonzero()
        return _fill_padding(gates, mask, 1.0), _fill_padding(log_prob, mask, 0.0)


def _fill_padding(values: Tensor, mask: Tensor | None, fill: float) -> Tensor:
    """Replace ``values`` by ``fill`` where ``mask`` is False; ``mask`` broadcasts to ``values``."""
    if mask is None:
        return values
    keep = mask.to(device=values.device, dtype=torch.bool)
    return torch.where(keep, values, torch.full_like(values, fill))
