"""When DIFFMASK training has converged: the Lagrange multiplier and the validation L0 level off.

A Lagrangian run has converged when the dual variable stops moving (the constraint is balanced
against sparsity) and the quantity being minimised, the expected share of kept tokens on
validation data, stops moving too. Both are read from the per-epoch summaries that
``train_diffmask`` records: ``lambda`` (the mean multiplier over the epoch's steps) and
``val_l0`` (``l0``, the training mean, when there is no validation loader).

Over the last ``window + 1`` epochs (so ``window`` epoch-to-epoch changes):

    spread(lambda) <= lambda_atol + lambda_rtol * mean(|lambda|)
    spread(L0)     <= l0_atol

where ``spread`` is max - min. The absolute tolerance on lambda lets a multiplier that hovers
near 0 (a slack constraint: every example is inside the margin without pressure) count as level.
A multiplier pinned at its cap ``lambda_max`` is never "level": the constraint could not be met
with the largest pressure allowed (e.g. every gate closed and unable to reopen). Nor is a run
whose training masks miss the constraint: with the per-example constraint (epochs record
``delivered_within_margin``), the last epoch's share of delivered masks within the margin must
reach ``constraint_target`` (``train_diffmask``: ``target_within_margin``). A multiplier that
climbs slowly (a small ``lr_lambda``) can stay within the lambda tolerance while half the
examples lie outside the margin; that run is still moving, not converged.

A run that is not level can still stop on a **validation plateau**: ``patience`` epochs that
meet the validation target (``target_within_margin`` of the validation examples within the
margin: the epochs training may deliver) have passed without one that lowers the validation
L0 by more than ``l0_atol`` below the last such improvement (epochs under the target are not
counted). Training delivers the
best epoch, so further epochs would deliver the same explanation unless they beat it; this
ends runs whose multiplier creeps without changing what is delivered (seen when the
training-share goal sits at the edge of what the probe reaches). Such a run is reported as
stopped on a plateau, not as converged.

The tolerances are a :class:`~attribution_analysis.config.ConvergenceRule` (the
``diffmask.training.convergence`` config section; re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from attribution_analysis.config import ConvergenceRule


@dataclass(frozen=True)
class ConvergenceStatus:
    """Whether the run has converged after the last epoch, and the measured spreads.

    ``lambda_spread``/``l0_spread`` are ``None`` while fewer than ``window + 1`` epochs exist.
    """

    converged: bool
    epochs: int
    lambda_spread: float | None
    lambda_tolerance: float | None
    l0_spread: float | None
    l0_tolerance: float
    lambda_at_cap: bool = False
    plateau: bool = False
    epochs_without_improvement: int | None = None
    constraint_unmet: bool = False

    @property
    def stop(self) -> bool:
        """Whether training should stop: converged, or on a validation plateau."""
        return self.converged or self.plateau

    @classmethod
    def from_dict(cls, data: dict) -> ConvergenceStatus:
        """The status saved by :meth:`to_dict` (other keys, e.g. ``rule``, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.lambda_spread is None:
            return f"{self.epochs} epoch(s): too few to judge convergence"
        state = "converged" if self.converged else "not converged"
        if self.lambda_at_cap:
            state += " (lambda at its cap lambda_max)"
        if self.constraint_unmet:
            state += " (too few training masks within the margin)"
        line = (
            f"{state} after {self.epochs} epochs: lambda spread {self.lambda_spread:.3g} "
            f"(tolerance {self.lambda_tolerance:.3g}), validation L0 spread "
            f"{self.l0_spread:.3g} (tolerance {self.l0_tolerance:.3g}) over the last epochs"
        )
        if self.plateau and not self.converged:
            line += (
                f"; validation plateau: no epoch improved the delivered explanation for "
                f"{self.epochs_without_improvement} epochs"
            )
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def _l0_series(epochs: Sequence[dict]) -> list[float]:
    key = "val_l0" if all("val_l0" in e for e in epochs) else "l0"
    return [float(e[key]) for e in epochs]


def epochs_without_improvement(
    epochs: Sequence[dict], target_within_margin: float, l0_atol: float
) -> int | None:
    """Selectable epochs (those meeting the validation target) since the last one that lowered
    the validation L0 by more than ``l0_atol`` below the previous such epoch; ``None`` while no
    epoch has met the target (or without validation numbers). Epochs under the target are not
    counted: the run is still settling (e.g. gates closing from fully open)."""
    reference, since = None, None
    for e in epochs:
        within, l0 = e.get("val_within_margin"), e.get("val_l0")
        selectable = within is not None and l0 is not None and within >= target_within_margin
        if selectable and (reference is None or l0 < reference - l0_atol):
            reference, since = float(l0), 0
        elif selectable and since is not None:
            since += 1
    return since


def check_convergence(
    epochs: Sequence[dict],
    rule: ConvergenceRule,
    lambda_max: float | None = None,
    target_within_margin: float | None = None,
    constraint_target: float | None = None,
) -> ConvergenceStatus:
    """Apply ``rule`` to the per-epoch summaries (each with ``lambda`` and ``val_l0``/``l0``);
    with ``lambda_max``, a window whose last epoch-mean lambda is within 1% of it never
    converges. With ``target_within_margin`` (and validation numbers ``val_l0``,
    ``val_within_margin``), a validation plateau of ``rule.patience`` epochs is reported as
    ``plateau`` (never before ``rule.min_epochs``). With ``constraint_target``, a last epoch
    whose ``delivered_within_margin`` (per-example constraint) is under it never converges."""
    n = len(epochs)
    since = (
        None
        if target_within_margin is None
        else epochs_without_improvement(epochs, target_within_margin, rule.l0_atol)
    )
    plateau = (
        rule.patience > 0 and since is not None and since >= rule.patience and n >= rule.min_epochs
    )
    if n < rule.window + 1:
        return ConvergenceStatus(False, n, None, None, None, rule.l0_atol, False, plateau, since)
    recent = list(epochs)[-(rule.window + 1) :]
    lambdas = [float(e["lambda"]) for e in recent]
    l0s = _l0_series(recent)
    lambda_spread = max(lambdas) - min(lambdas)
    lambda_tol = rule.lambda_atol + rule.lambda_rtol * sum(abs(v) for v in lambdas) / len(lambdas)
    l0_spread = max(l0s) - min(l0s)
    at_cap = lambda_max is not None and lambdas[-1] >= 0.99 * lambda_max
    delivered = recent[-1].get("delivered_within_margin")
    unmet = (
        constraint_target is not None
        and delivered is not None
        and float(delivered) < constraint_target
    )
    converged = (
        n >= rule.min_epochs
        and lambda_spread <= lambda_tol
        and l0_spread <= rule.l0_atol
        and not at_cap
        and not unmet
    )
    return ConvergenceStatus(
        converged,
        n,
        lambda_spread,
        lambda_tol,
        l0_spread,
        rule.l0_atol,
        at_cap,
        plateau,
        since,
        unmet,
    )


__all__ = [
    "ConvergenceRule",
    "ConvergenceStatus",
    "check_convergence",
    "epochs_without_improvement",
]
