"""Evaluate several attribution methods on the same examples: faithfulness (on token ids, with a
recorded removal operation), plausibility against gold rationales, sparsity, runtime and IG's
completeness error; tables carry bootstrap 95% confidence intervals over examples."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import kendalltau

from attribution_analysis.evaluation.faithfulness import (
    ERASER_FRACTIONS,
    comprehensiveness_sufficiency_from_curves,
    deletion_insertion_curves,
    effect_sign_ranks,
    leave_one_out_effects,
    sparsity_metrics,
)
from attribution_analysis.evaluation.plausibility import auprc, topk_precision_recall_f1
from attribution_analysis.evaluation.removal import make_predict, memoised
from attribution_analysis.evaluation.statistics import METRICS, bootstrap_ci
from attribution_analysis.methods.base import AttributionMethod

CURVE_GRID = np.linspace(0.0, 1.0, 11)
TABLE_METRICS = (
    "comprehensiveness_aopc",
    "sufficiency_aopc",
    "deletion_auc",
    "insertion_auc",
    "loo_kendall",
    "auprc",
    "token_f1",
    "gini",
    "seconds_per_example",
    "completeness_error",
    "sanity_spearman",
    "sanity_spearman_retrained",
)


@dataclass
class MethodEvaluation:
    """Per-example metric values and mean deletion/insertion curves of one method."""

    name: str
    values: dict[str, list[float]] = field(default_factory=dict)
    deletion: list[np.ndarray] = field(default_factory=list)
    insertion: list[np.ndarray] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))

    def extend(self, other: MethodEvaluation) -> None:
        """Append ``other``'s examples after this one's (same method)."""
        for key, values in other.values.items():
            self.values.setdefault(key, []).extend(values)
        self.deletion.extend(other.deletion)
        self.insertion.extend(other.insertion)


def _kendall(scores: np.ndarray, effects: np.ndarray) -> float:
    if len(scores) < 2 or np.all(scores == scores[0]) or np.all(effects == effects[0]):
        return math.nan
    return float(kendalltau(scores, effects)[0])


def _on_grid(x: list[float], y: list[float]) -> np.ndarray:
    return np.interp(CURVE_GRID, np.asarray(x, float), np.asarray(y, float))


def _example_metrics(ev: MethodEvaluation, predict, scores, scorable, effects, gold) -> None:
    curves = deletion_insertion_curves(predict, scores, scorable)
    cs = comprehensiveness_sufficiency_from_curves(curves, ERASER_FRACTIONS)  # same variants
    ev.add("comprehensiveness_aopc", cs["comprehensiveness_aopc"])
    ev.add("sufficiency_aopc", cs["sufficiency_aopc"])
    ev.add("deletion_auc", curves["deletion_auc"])
    ev.add("insertion_auc", curves["insertion_auc"])
    ev.deletion.append(_on_grid(curves["x"], curves["deletion"]))
    ev.insertion.append(_on_grid(curves["x"], curves["insertion"]))
    ev.add("loo_kendall", _kendall(scores[scorable].numpy(), effects))
    signs = effect_sign_ranks(scores, scorable, effects)
    ev.add("supporting_rank", signs["supporting_rank"])
    ev.add("opposing_rank", signs["opposing_rank"])
    ev.add("gini", sparsity_metrics(scores, scorable)["gini"])
    if gold is not None:
        g = np.asarray(gold)[scorable.numpy()]
        s = scores[scorable].numpy()
        ev.add("auprc", auprc(g, s))
        ev.add("token_f1", topk_precision_recall_f1(g, s).f1 if g.sum() else math.nan)


def evaluate_methods(
    methods: dict[str, AttributionMethod],
    batches: Iterable[dict],
    gold_for: callable,
    removal: str = "mask",
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    baseline_embedding: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = True,
    accelerator=None,
) -> dict[str, MethodEvaluation]:
    """Run every method on every batch and compute per-example metrics.

    ``gold_for(meta, input_ids [tokens]) -> list[int] | None`` gives 0/1 gold labels per token.
    Leave-one-out effects (for Kendall tau) are computed once per example and shared. Every
    method and metric explains the model's decision on the original input (ERASER convention):
    for the recommender the click probability of predicted clicks and 1 - p of predicted
    non-clicks, so unsigned methods (DIFFMASK) and signed ones are measured alike. Each example
    also records that ``decision`` (for the recommender +1 for a predicted click, -1 otherwise)
    and ``has_gold`` (1 when ``gold_for`` gave labels), for :func:`subset_evaluation`.

    With several processes (``accelerator``), process ``r`` evaluates batches ``r, r + N, ...``
    and every process gets all evaluations, in batch order (as with one process).
    """
    from tqdm.auto import tqdm

    from attribution_analysis.utils.distributed import per_process, world

    kwargs = dict(removal=removal, mask_token_id=mask_token_id, pad_token_id=pad_token_id,
                  baseline_embedding=baseline_embedding, device=device)  # fmt: skip
    rank, n_procs = world(accelerator)
    evals = {name: MethodEvaluation(name) for name in methods}
    batches = list(batches)
    for start in tqdm(range(0, len(batches), n_procs), desc="compare", disable=quiet or rank):
        round_ = batches[start : start + n_procs]
        mine = None
        if rank < len(round_):
            mine = _evaluate_batch(methods, round_[rank], gold_for, **kwargs)
        parts = per_process(mine, accelerator)
        for part in parts[: len(round_)]:  # in batch order
            for name, ev in part.items():
                evals[name].extend(ev)
    return evals


def _evaluate_batch(methods, batch, gold_for, removal, mask_token_id, pad_token_id,
                    baseline_embedding, device) -> dict[str, MethodEvaluation]:  # fmt: skip
    """Every method and metric on one batch: ``{method: evaluation of its examples}``."""
    from attribution_analysis.data.batches import split_batch

    evals = {name: MethodEvaluation(name) for name in methods}
    adapter = next(iter(methods.values())).adapter
    ids, mask, ctx, meta = split_batch(batch, device)
    ctx = adapter.with_decision(ids, mask, adapter.prepare_context(ctx))
    scores = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        attr, extra = method.attribute(ids, mask, ctx, return_extras=True)
        scores[name] = attr.detach().float().cpu()
        per_example = (time.perf_counter() - t0) / len(ids)
        for i in range(len(ids)):
            evals[name].add("seconds_per_example", per_example)
            if "completeness_error" in extra:
                evals[name].add("completeness_error", float(extra["completeness_error"][i]))
    scorable_all = next(iter(methods.values())).scorable(ids, mask).cpu()
    for i in range(len(ids)):
        n = int(mask[i].sum())
        one_ctx = {k: v[i : i + 1] for k, v in ctx.items()}
        predict = make_predict(
            adapter,
            ids[i, :n],
            mask[i, :n],
            one_ctx,
            removal,
            mask_token_id=mask_token_id,
            pad_token_id=pad_token_id,
            baseline_embedding=baseline_embedding,
        )
        predict = memoised(predict)  # the methods' curves share rows: each runs once
        scorable = scorable_all[i, :n]
        effects = leave_one_out_effects(predict, scorable).numpy()
        gold = gold_for(meta[i] if meta else None, ids[i, :n].cpu())
        decision = float(ctx[adapter.decision_key][i])
        for name in methods:
            _example_metrics(evals[name], predict, scores[name][i, :n], scorable, effects, gold)
            evals[name].add("decision", decision)
            evals[name].add("has_gold", gold is not None)
    return evals


GOLD_METRICS = ("auprc", "token_f1")
"""Metrics recorded only for examples with gold labels (``has_gold``)."""


def subset_evaluation(ev: MethodEvaluation, keep: list[bool]) -> MethodEvaluation:
    """The evaluation restricted to the examples where ``keep`` (one flag per example, in the
    order :func:`evaluate_methods` saw them) is true, e.g. the predicted clicks:
    ``keep = [d > 0 for d in ev.values["decision"]]``."""
    n = len(ev.values.get("decision", []))
    if len(keep) != n:
        raise ValueError(f"keep has {len(keep)} flags for {n} examples")
    with_gold = [k for k, g in zip(keep, ev.values.get("has_gold", [])) if g]
    out = MethodEvaluation(ev.name)
    for key, values in ev.values.items():
        flags = with_gold if key in GOLD_METRICS else keep
        if len(values) != len(flags):
            raise ValueError(f"{ev.name}: {len(values)} values of {key!r} for {len(flags)} flags")
        out.values[key] = [v for v, k in zip(values, flags) if k]
    out.deletion = [c for c, k in zip(ev.deletion, keep) if k]
    out.insertion = [c for c, k in zip(ev.insertion, keep) if k]
    return out


def _cell(values: list[float], seed: int) -> tuple[float, float, float]:
    return bootstrap_ci(np.asarray(values, float), n_boot=1000, seed=seed)


def comparison_table(evals: dict[str, MethodEvaluation], seed: int = 0) -> list[dict]:
    """One row per method: ``metric`` = mean, ``metric_low``/``metric_high`` = 95% CI; IG's
    completeness error as a median."""
    rows = []
    for name, ev in evals.items():
        row: dict = {"method": name, "n_examples": len(ev.values.get("gini", []))}
        for metric in TABLE_METRICS:
            values = ev.values.get(metric)
            if metric == "sanity_spearman":
                continue
            if not values:
                continue
            mean, low, high = _cell(values, seed)
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = mean, low, high
            if metric == "completeness_error":
                row["completeness_error_median"] = float(np.nanmedian(values))
        rows.append(row)
    return rows


def _fmt(row: dict, metric: str) -> str:
    if metric in ("sanity_spearman", "sanity_spearman_retrained"):  # one number, no interval
        value = row.get(metric)
        return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"
    if metric not in row or row[metric] is None or not math.isfinite(row[metric]):
        return "—"
    if metric == "seconds_per_example":
        return f"{row[metric]:.4f}"
    return f"{row[metric]:.3f} [{row[metric + '_low']:.3f}, {row[metric + '_high']:.3f}]"


def display_rows(rows: list[dict]) -> list[dict]:
    """Rows for people: ``mean [low, high]`` strings, one column per metric present."""
    present = [m for m in TABLE_METRICS if any(m in r for r in rows)]
    out = []
    for r in rows:
        d = {"method": r["method"]}
        for m in present:
            d[m] = _fmt(r, m)
        if "completeness_error_median" in r:
            d["completeness_error_median"] = f"{r['completeness_error_median']:.4f}"
        out.append(d)
    return out


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`display_rows` with a legend of ranges and directions."""
    shown = display_rows(rows)
    columns = list(dict.fromkeys(k for r in shown for k in r))
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in shown:
        lines.append("| " + " | ".join(str(r.get(c, "—")) for c in columns) + " |")
    legend = []
    for c in columns[1:]:
        spec = METRICS.get(c.removesuffix("_median"))
        if spec:
            arrow = "higher is better" if spec.higher_is_better else "lower is better"
            legend.append(f"- `{c}`: range {list(spec.range)}, {arrow}. {spec.description}")
    return "\n".join(lines) + "\n\n" + "\n".join(legend) + "\n"


def mean_curves(evals: dict[str, MethodEvaluation], kind: str) -> dict[str, tuple[list, list]]:
    """Mean deletion or insertion curve per method on an 11-point grid of removed fractions."""
    out = {}
    for name, ev in evals.items():
        curves = ev.deletion if kind == "deletion" else ev.insertion
        if curves:
            out[name] = (CURVE_GRID.tolist(), np.mean(np.stack(curves), 0).tolist())
    return out
