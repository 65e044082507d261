"""Faithfulness: does an attribution match what the model does when tokens are removed?

The functions here know nothing about the model.  They take a callable

    predict(keep: BoolTensor[n_variants, n_tokens]) -> Tensor[n_variants]

that returns the explained output p (e.g. the click probability) of *one* example for each row
of ``keep``, with the positions where ``keep`` is False removed.  The caller builds it and
chooses the removal operation (deletion, [MASK], [PAD], a learned baseline) and should report
that choice beside the numbers.  Besides ``predict`` they take

* ``scores``:   Tensor[n_tokens], the attribution of each position (higher = more important);
* ``scorable``: BoolTensor[n_tokens], the positions that may be removed.  Other positions
  (padding, special tokens) are kept in every variant and ignored in every ranking.

Token ranking: scorable positions by descending score; ties go to the earlier position.
``predict`` runs under ``torch.no_grad()``.  Ranges below assume p in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.stats import kendalltau

Predict = Callable[[torch.Tensor], torch.Tensor]

ERASER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)
"""The AOPC grid of ERASER's scorer: shares of the scorable tokens."""


def _check_inputs(scores: torch.Tensor, scorable: torch.Tensor) -> None:
    if scores.ndim != 1 or scorable.shape != scores.shape:
        raise ValueError(
            f"scores and scorable must be 1-D of the same shape, got {tuple(scores.shape)} "
            f"and {tuple(scorable.shape)}"
        )
    if scorable.dtype != torch.bool:
        raise ValueError(f"scorable must be a bool tensor, got {scorable.dtype}")
    if not torch.isfinite(scores[scorable]).all():
        raise ValueError("scores of scorable positions must be finite")


def attribution_order(scores: torch.Tensor, scorable: torch.Tensor) -> torch.Tensor:
    """Scorable positions from most to least important: LongTensor[n_scorable].

    Descending by score; equal scores keep their position order (earlier first).
    """
    _check_inputs(scores, scorable)
    positions = torch.nonzero(scorable, as_tuple=False).flatten().cpu().numpy()
    values = scores.detach().cpu().double().numpy()[positions]
    order = np.argsort(-values, kind="stable")
    return torch.as_tensor(positions[order], dtype=torch.long, device=scorable.device)


def _run(predict: Predict, keep: torch.Tensor, batch_size: int | None) -> np.ndarray:
    """Call ``predict`` on keep masks [n_variants, n_tokens] (in chunks if ``batch_size``)."""
    step = len(keep) if batch_size is None else batch_size
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs = []
    with torch.no_grad():
        for start in range(0, len(keep), step):
            chunk = keep[start : start + step]
            out = predict(chunk)
            if out.shape != (len(chunk),):
                raise ValueError(
                    f"predict returned shape {tuple(out.shape)} for {len(chunk)} variants"
                )
            outputs.append(out.detach().cpu().double().numpy())
    return np.concatenate(outputs)


def top_k_count(fraction: float, n_scorable: int) -> int:
    """``max(1, ceil(fraction * n_scorable))``, at most ``n_scorable``.

    The product is rounded to 9 decimals first so that e.g. 0.07 * 100 gives 7, not 8.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    return min(n_scorable, max(1, math.ceil(round(fraction * n_scorable, 9))))


def comprehensiveness_sufficiency(
    predict: Predict,
    scores: torch.Tensor,
    scorable: torch.Tensor,
    fractions: Sequence[float] = ERASER_FRACTIONS,
    batch_size: int | None = None,
) -> dict[str, float | list[float] | list[int]]:
    """ERASER comprehensiveness and sufficiency at each fraction of the scorable tokens.

    With r_k the k top-ranked scorable tokens, k = max(1, ceil(fraction * n_scorable)):

    * comprehensiveness(k) = p(x) - p(x without r_k): range [-1, 1], higher is better;
    * sufficiency(k) = p(x) - p(r_k only, non-scorable positions kept): range [-1, 1], lower is
      better;
    * ``*_aopc``: the mean over the fractions.

    All 1 + 2 * len(fractions) variants go to ``predict`` in one call (or in chunks of
    ``batch_size``).

    Returns:
        ``fractions``, ``k`` (lists), ``p_full`` (p(x)), ``comprehensiveness`` and
        ``sufficiency`` (lists, one per fraction), ``comprehensiveness_aopc``,
        ``sufficiency_aopc``, ``n_scorable``.  Every value is nan if no token is scorable.
    """
    order = attribution_order(scores, scorable)
    n = len(order)
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("fractions must not be empty")
    ks = [top_k_count(f, n) if n else 0 for f in fractions]
    if n == 0:
        nans = [math.nan] * len(fractions)
        return _comp_suff_result(fractions, ks, math.nan, nans, nans, n)
    full = torch.ones_like(scorable)
    without, only = [], []
    for k in ks:
        top = order[:k]
        removed = full.clone()
        removed[top] = False
        kept = ~scorable
        kept[top] = True
        without.append(removed)
        only.append(kept)
    p = _run(predict, torch.stack([full, *without, *only]), batch_size)
    m = len(fractions)
    comprehensiveness = (p[0] - p[1 : 1 + m]).tolist()
    sufficiency = (p[0] - p[1 + m :]).tolist()
    return _comp_suff_result(fractions, ks, float(p[0]), comprehensiveness, sufficiency, n)


def _comp_suff_result(
    fractions: list[float],
    ks: list[int],
    p_full: float,
    comprehensiveness: list[float],
    sufficiency: list[float],
    n_scorable: int,
) -> dict[str, float | list[float] | list[int]]:
    return {
        "fractions": fractions,
        "k": ks,
        "p_full": p_full,
        "comprehensiveness": comprehensiveness,
        "sufficiency": sufficiency,
        "comprehensiveness_aopc": float(np.mean(comprehensiveness)),
        "sufficiency_aopc": float(np.mean(sufficiency)),
        "n_scorable": n_scorable,
    }


def comprehensiveness_sufficiency_from_curves(
    curves: dict, fractions: Sequence[float] = ERASER_FRACTIONS
) -> dict[str, float | list[float] | list[int]]:
    """:func:`comprehensiveness_sufficiency` read off :func:`deletion_insertion_curves`, without
    calling the model again: its variants are curve points (the input without the k top-ranked
    tokens is deletion step k; the k top-ranked tokens only is insertion step k; the full input
    is deletion step 0), ranked the same way.

    ``curves``: the result of :func:`deletion_insertion_curves` for the same example and scores.
    Returns what :func:`comprehensiveness_sufficiency` returns (equal up to the float rounding
    of the batches ``predict`` saw).
    """
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("fractions must not be empty")
    deletion, insertion = curves["deletion"], curves["insertion"]
    n = len(deletion) - 1
    if len(insertion) != n + 1:
        raise ValueError(
            f"deletion and insertion curves differ in length ({len(deletion)} and {len(insertion)})"
        )
    ks = [top_k_count(f, n) if n else 0 for f in fractions]
    if n == 0:
        nans = [math.nan] * len(fractions)
        return _comp_suff_result(fractions, ks, math.nan, nans, nans, n)
    p_full = float(deletion[0])
    comprehensiveness = [p_full - float(deletion[k]) for k in ks]
    sufficiency = [p_full - float(insertion[k]) for k in ks]
    return _comp_suff_result(fractions, ks, p_full, comprehensiveness, sufficiency, n)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def deletion_insertion_curves(
    predict: Predict,
    scores: torch.Tensor,
    scorable: torch.Tensor,
    batch_size: int | None = None,
) -> dict[str, float | list[float]]:
    """Deletion and insertion curves (RISE) over steps 0..n, n = number of scorable tokens.

    Deletion step j: the j top-ranked tokens removed (step 0 is the full input).  Insertion
    step j: every scorable token removed except the j top-ranked ones (step 0 keeps only the
    non-scorable positions, step n is the full input).  x = j / n.

    Returns:
        ``x``, ``deletion``, ``insertion``: lists of n + 1 values of p; ``deletion_auc`` and
        ``insertion_auc``: trapezoid areas under the raw curves, range [0, 1] for p in [0, 1];
        deletion: lower is better, insertion: higher is better.  Areas are nan if no token is
        scorable.  All 2 * (n + 1) variants go to ``predict`` in one call (or in chunks of
        ``batch_size``).
    """
    order = attribution_order(scores, scorable)
    n = len(order)
    deletion = torch.ones((n + 1, len(scorable)), dtype=torch.bool, device=scorable.device)
    insertion = (~scorable).unsqueeze(0).repeat(n + 1, 1)
    for step in range(1, n + 1):
        deletion[step:, order[step - 1]] = False
        insertion[step:, order[step - 1]] = True
    p = _run(predict, torch.cat([deletion, insertion]), batch_size)
    p_del, p_ins = p[: n + 1], p[n + 1 :]
    x = np.linspace(0.0, 1.0, n + 1) if n else np.zeros(1)
    return {
        "x": x.tolist(),
        "deletion": p_del.tolist(),
        "insertion": p_ins.tolist(),
        "deletion_auc": _trapezoid(x, p_del) if n else math.nan,
        "insertion_auc": _trapezoid(x, p_ins) if n else math.nan,
    }


def leave_one_out_effects(
    predict: Predict, scorable: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """p(x) - p(x without token i) for each scorable position i, in position order.

    Returns:
        Tensor[n_scorable] (float64, on the CPU).
    """
    positions = torch.nonzero(scorable, as_tuple=False).flatten()
    keep = torch.ones((len(positions) + 1, len(scorable)), dtype=torch.bool, device=scorable.device)
    keep[torch.arange(1, len(positions) + 1, device=scorable.device), positions] = False
    p = _run(predict, keep, batch_size)
    return torch.from_numpy(p[0] - p[1:])


def leave_one_out_kendall(
    predict: Predict,
    scores: torch.Tensor,
    scorable: torch.Tensor,
    batch_size: int | None = None,
) -> float:
    """Kendall tau (scipy, tau-b) between the scores and the leave-one-out effects.

    Over scorable tokens only.  Range [-1, 1], higher is better.  nan with fewer than 2
    scorable tokens, or when the scores or the effects are all equal.
    """
    _check_inputs(scores, scorable)
    if int(scorable.sum()) < 2:
        return math.nan
    effects = leave_one_out_effects(predict, scorable, batch_size).numpy()
    values = scores.detach().cpu().double().numpy()[scorable.cpu().numpy()]
    if np.ptp(values) == 0 or np.ptp(effects) == 0:
        return math.nan
    return float(kendalltau(values, effects)[0])


EFFECT_THRESHOLD = 0.01
"""Leave-one-out effect (probability of the decision) from which a token counts as supporting
(``> threshold``) or opposing (``< -threshold``) the decision in :func:`effect_sign_ranks`."""


def effect_sign_ranks(
    scores: torch.Tensor,
    scorable: torch.Tensor,
    effects: torch.Tensor | np.ndarray,
    threshold: float = EFFECT_THRESHOLD,
) -> dict[str, float]:
    """Where a ranking puts the tokens that support and those that oppose the decision.

    A token's relative rank is its place in :func:`attribution_order` divided by
    ``n_scorable - 1``: 0 = ranked first, 1 = ranked last. ``effects`` are the leave-one-out
    effects p(x) - p(x without i) of the scorable positions in position order (as
    :func:`leave_one_out_effects` returns them): a token *supports* the decision when its effect
    exceeds ``threshold`` (removing it lowers p) and *opposes* it when its effect is below
    ``-threshold`` (removing it raises p).

    * ``supporting_rank``: mean relative rank of the supporting tokens, range [0, 1], lower is
      better;
    * ``opposing_rank``: mean relative rank of the opposing tokens, range [0, 1], higher is
      better (removal curves reward ranking them last: deleted early they raise p, kept in a
      top-k set they lower it);
    * ``n_supporting``, ``n_opposing``: how many tokens each mean is over.

    A nan effect counts in neither group. A rank is nan when its group is empty or fewer than
    2 tokens are scorable. A random ranking
    puts both groups at about 0.5; one by the size of the effect whatever its sign puts both
    early.
    """
    _check_inputs(scores, scorable)
    if isinstance(effects, torch.Tensor):
        effects = effects.detach().cpu().double().numpy()
    effects = np.asarray(effects, dtype=float)
    n = int(scorable.sum())
    if effects.shape != (n,):
        raise ValueError(
            f"effects must have one value per scorable position ({n}), got shape {effects.shape}"
        )
    if not threshold >= 0:  # also refuses nan
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    supporting, opposing = effects > threshold, effects < -threshold
    result = {
        "supporting_rank": math.nan,
        "opposing_rank": math.nan,
        "n_supporting": float(supporting.sum()),
        "n_opposing": float(opposing.sum()),
    }
    if n < 2:
        return result
    order = attribution_order(scores, scorable).cpu().numpy()  # positions, best first
    rank = np.empty(len(scorable), dtype=float)
    rank[order] = np.arange(n)
    positions = torch.nonzero(scorable, as_tuple=False).flatten().cpu().numpy()
    relative = rank[positions] / (n - 1)  # in position order, as ``effects``
    if supporting.any():
        result["supporting_rank"] = float(relative[supporting].mean())
    if opposing.any():
        result["opposing_rank"] = float(relative[opposing].mean())
    return result


def sparsity_metrics(
    scores: torch.Tensor, scorable: torch.Tensor, top_fraction: float = 0.2
) -> dict[str, float]:
    """How concentrated the attribution mass |scores| is over the scorable tokens.

    * ``gini``: Gini coefficient of |scores|, range [0, 1 - 1/n]; 0 = spread evenly, higher =
      sparser (higher is better if concise explanations are wanted).
    * ``entropy``: Shannon entropy of |scores| / sum(|scores|) divided by log(n), range [0, 1];
      1 = spread evenly, lower = sparser.  nan for n = 1.
    * ``top_mass``: share of the mass on the top max(1, ceil(top_fraction * n)) tokens, range
      [k / n, 1]; higher = sparser.

    Every value is nan if no token is scorable or all |scores| are 0.  ``n_scorable`` is added.
    """
    _check_inputs(scores, scorable)
    mass = scores.detach().cpu().double().abs().numpy()[scorable.cpu().numpy()]
    n = len(mass)
    result = {"gini": math.nan, "entropy": math.nan, "top_mass": math.nan, "n_scorable": float(n)}
    total = mass.sum()
    if n == 0 or total == 0:
        return result
    ascending = np.sort(mass)
    ranks = np.arange(1, n + 1)
    result["gini"] = float(np.sum((2 * ranks - n - 1) * ascending) / (n * total))
    share = mass / total
    nonzero = share[share > 0]
    if n > 1:
        result["entropy"] = float(-np.sum(nonzero * np.log(nonzero)) / math.log(n))
    k = top_k_count(top_fraction, n)
    result["top_mass"] = float(ascending[::-1][:k].sum() / total)
    return result
