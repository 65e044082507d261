"""The news benchmark: DIFFMASK and baselines on held-out dev candidates over several seeds.

    python benchmarks/bench_news.py [--config configs/attribution/nrms_bert_finetune.yaml]
        [--n_samples 500] [--seeds 0,1,2]
        [--methods diffmask,diffmask_effect,diffmask_loo,ig,saliency,leave_one_out,random]
        [--out output/bench_news] [--quiet] [--smoke]

It uses the config's recommender (trained first when missing, as the other commands do) and the
config's DIFFMASK settings. The held-out candidates are those of ``split_examples`` with
``n_samples`` overridden, the same for every seed, and so are DIFFMASK's training and validation
examples; a seed changes DIFFMASK's probe initialisation, training order and gate noise, and
the random method's scores. For each seed it

1. trains DIFFMASK (into ``<out>/seed_<s>/``, from scratch: old checkpoints there are removed);
2. measures DIFFMASK's own numbers on the held-out candidates (share within the margin, kept
   share, gold AUPRC), for the model's predicted clicks (click probability >= 0.5 on the
   original input), its predicted non-clicks, and all of them;
3. evaluates every method's faithfulness and plausibility (``evaluate_methods``) under two
   removals: ``mask`` (the [MASK] id) and ``baseline`` (this seed's learned DIFFMASK baseline
   embedding), on the same three subsets; besides the removal curves and plausibility, where
   each method ranks the tokens that support and those that oppose the decision (their
   leave-one-out effects, ``effect_sign_ranks``).

Attributions of the seed-independent methods (IG, saliency, leave-one-out, ...) are computed
once and replayed, and their ``mask`` metrics are computed once; only their ``baseline`` metrics
are recomputed for each seed (the baseline embedding changes).

Output: Markdown tables (mean ± sample sd over seeds) of DIFFMASK's numbers, of the issue's
targets, and of the methods per removal and subset; the wall time of each phase. Targets are
checked on the means over seeds (on the sds for the sd targets; the comparisons with IG under
removal ``baseline`` on all candidates); ``gap`` is by how much a missed target is missed (0 when
met). Everything is written to ``<out>/bench_news.json`` and ``<out>/bench_news.md``.

Runtime of the default command on the 2-core CPU, measured: 44 min with NRMS-MiniLM already
trained (training it first adds about 7 min): DIFFMASK training 3.5-6.4 min per seed (6-11
epochs); the first seed's ``mask`` phase 10 min (IG's attributions, 0.64 s per example, and
five methods' removal curves); the other seeds' ``mask`` phases about 2 min (DIFFMASK and
random); each seed's ``baseline`` phase 4-4.6 min (five methods). Comprehensiveness and
sufficiency are read off the deletion and insertion curves, without model calls of their own.
``--smoke`` (tiny random model, 16 candidates, 2 seeds, DIFFMASK/IG/random) takes about 20 s,
6 s of it after the imports, plus about 15 s the first time to generate the tiny corpus and
train the tiny recommender.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from attribution_analysis.app.analysis import _train, annotate, gold_labels
from attribution_analysis.app.cli import run_cli
from attribution_analysis.app.comparison import build_methods, gold_lookup
from attribution_analysis.app.workspace import open_workspace, split_examples
from attribution_analysis.config import AttributionConfig, load_config, resolve_path, to_dict
from attribution_analysis.evaluation.attribution_run import AttributionRun
from attribution_analysis.evaluation.compare import (
    MethodEvaluation,
    evaluate_methods,
    subset_evaluation,
)
from attribution_analysis.evaluation.faithfulness import EFFECT_THRESHOLD
from attribution_analysis.evaluation.removal import OPERATIONS
from attribution_analysis.methods.diffmask.train_diffmask import extract_attributions_diffmask
from attribution_analysis.methods.registry import parse_method_list
from attribution_analysis.utils.devices import make_accelerator, seed_everything
from attribution_analysis.utils.io import atomic_write_text

DEFAULTS = {
    "config": "configs/attribution/nrms_bert_finetune.yaml",
    "n_samples": 500,
    "seeds": "0,1,2",
    "methods": "diffmask,diffmask_effect,diffmask_loo,ig,saliency,leave_one_out,random",
    "out": "output/bench_news",
}
SMOKE = {
    "config": "configs/attribution/tiny_test.yaml",
    "n_samples": 16,
    "seeds": "0,1",
    "methods": "diffmask,diffmask_effect,diffmask_loo,ig,random",
    "out": "output/test_tiny/bench_news",
}
REMOVALS = ("mask", "baseline")
SUBSETS = {
    "predicted_click": "predicted clicks",
    "predicted_non_click": "predicted non-clicks",
    "all": "all",
}
SEED_DEPENDENT = ("diffmask", "diffmask_effect", "diffmask_loo", "random")
METHOD_METRICS = {
    "comprehensiveness_aopc": "compr. AOPC ↑",
    "sufficiency_aopc": "suff. AOPC ↓",
    "deletion_auc": "deletion AUC ↓",
    "insertion_auc": "insertion AUC ↑",
    "supporting_rank": "supporting rank ↓",
    "opposing_rank": "opposing rank ↑",
    "auprc": "AUPRC ↑",
    "token_f1": "token F1 ↑",
}
DIFFMASK_METRICS = {
    "within_margin_share": "within margin ↑",
    "kept_share": "kept share ↓",
    "auprc": "gold AUPRC ↑",
}


# ---------------------------------------------------------------------- helpers
class Phases:
    """Wall time of named phases, printed as each one ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
        print(f"[bench] {name}: {self.seconds[name]:.1f} s", flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.start


class Replay:
    """An attribution method whose scores are computed on the first pass over the batches and
    replayed on later passes (the batches must come in the same order): every removal then
    scores the same attributions, and each method runs once per example."""

    def __init__(self, method) -> None:
        self.method, self.adapter, self.name = method, method.adapter, method.name
        self.cache: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
        self.position = 0

    def rewind(self) -> None:
        self.position = 0

    def scorable(self, input_ids, attention_mask):
        return self.method.scorable(input_ids, attention_mask)

    def attribute(self, input_ids, attention_mask, context, return_extras=False):
        if self.position == len(self.cache):
            scores, extras = self.method.attribute(
                input_ids, attention_mask, context, return_extras=True
            )
            self.cache.append((input_ids.cpu(), scores.detach().cpu(), extras))
        ids, scores, extras = self.cache[self.position]
        if not torch.equal(ids, input_ids.cpu()):
            raise RuntimeError(f"{self.name}: the batches changed between passes")
        self.position += 1
        scores = scores.to(input_ids.device)
        return (scores, extras) if return_extras else scores


def _nanmean(values) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def subset_flags(clicks: list[bool]) -> dict[str, list[bool]]:
    """One flag per example for each of :data:`SUBSETS`."""
    return {
        "predicted_click": list(clicks),
        "predicted_non_click": [not c for c in clicks],
        "all": [True] * len(clicks),
    }


def method_numbers(evals: dict[str, MethodEvaluation]) -> dict[str, dict[str, dict]]:
    """``{subset: {method: {metric: mean over examples, n_examples}}}``."""
    out: dict[str, dict[str, dict]] = {s: {} for s in SUBSETS}
    for name, ev in evals.items():
        clicks = [d > 0 for d in ev.values["decision"]]
        for subset, keep in subset_flags(clicks).items():
            sub = subset_evaluation(ev, keep)
            row = {m: _nanmean(sub.values.get(m, [])) for m in METHOD_METRICS}
            out[subset][name] = {**row, "n_examples": sum(keep)}
    return out


def diffmask_numbers(ws, results, margin: float) -> dict[str, dict]:
    """``AttributionRun.evaluate`` (within-margin share, kept share, gold AUPRC, ...) per
    subset."""
    run = annotate(ws, results, ws.config.split)
    clicks = [r.original_output >= 0.5 for r in results]
    out = {}
    for subset, keep in subset_flags(clicks).items():
        rs = [r for r, k in zip(run.results, keep) if k]
        out[subset] = AttributionRun(rs).evaluate(margin, gold_labels)
    return out


def mean_sd(values: list[float]) -> dict:
    """Mean and sample sd over seeds of the finite values (sd needs two of them)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(kept) if kept else math.nan,
        "sd": statistics.stdev(kept) if len(kept) >= 2 else math.nan,
        "values": values,
    }


# ---------------------------------------------------------------------- the benchmark
def run_benchmark(
    config: AttributionConfig,
    seeds: list[int],
    names: list[str],
    out: Path,
    quiet: bool,
    effect_unseen: bool = False,
) -> dict:
    """Train, explain and evaluate for every seed; returns the JSON-ready report.
    ``effect_unseen``: ``diffmask_effect``'s head is fitted without the held-out candidates'
    titles."""
    phases = Phases()
    device = make_accelerator(config.device, config.mixed_precision).device
    environment = {
        "device": f"{device} ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(
        f"[bench] device {environment['device']}, torch {environment['torch']}, "
        f"threads {environment['threads']}",
        flush=True,
    )
    seed_everything(config.seed)
    with phases("workspace (recommender, data, news vectors)"):
        ws = open_workspace(config, quiet)
        train_ex, val_ex, test_ex = split_examples(ws)
    gold_for = gold_lookup(ws)
    effect_exclude = {ex.news_id for ex in test_ex} if effect_unseen else set()
    fixed_names = [n for n in names if n not in SEED_DEPENDENT]
    fixed = {n: Replay(m) for n, m in build_methods(ws, fixed_names, None, config.ig_steps).items()}
    fixed_mask: dict[str, MethodEvaluation] = {}

    def evaluate(methods: dict, removal: str, baseline) -> dict[str, MethodEvaluation]:
        for m in methods.values():
            m.rewind()
        return evaluate_methods(
            methods,
            ws.loader(test_ex),
            gold_for,
            removal=removal,
            mask_token_id=ws.tokenizer.mask_token_id,
            pad_token_id=ws.tokenizer.pad_token_id,
            baseline_embedding=baseline,
            device=next(ws.model.parameters()).device,
            quiet=quiet,
        )

    per_seed = []
    for seed in seeds:
        ws_s = replace(ws, config=replace(ws.config, seed=seed))
        run_dir = out / f"seed_{seed}"
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        with phases(f"seed {seed}: train DIFFMASK"):
            diffmask = ws_s.build_diffmask()
            history = _train(ws_s, diffmask, run_dir, train_ex, val_ex, quiet)
        dm_device = next(diffmask.parameters()).device
        with phases(f"seed {seed}: DIFFMASK attributions"):
            t0 = time.perf_counter()
            results = extract_attributions_diffmask(
                diffmask,
                ws.loader(test_ex),
                len(test_ex),
                device=str(dm_device),
                tokenizer=ws.tokenizer,
                quiet=quiet,
            )
            dm_seconds = (time.perf_counter() - t0) / max(len(results), 1)
        varying_names = [n for n in names if n in SEED_DEPENDENT]
        with phases(f"seed {seed}: build methods (fits diffmask_effect's head)"):
            built = build_methods(ws_s, varying_names, diffmask, config.ig_steps, quiet=quiet,
                                  effect_exclude=effect_exclude)  # fmt: skip
        varying = {n: Replay(m) for n, m in built.items()}
        with phases(f"seed {seed}: removal mask"):
            todo = {**varying, **{n: m for n, m in fixed.items() if n not in fixed_mask}}
            fresh = evaluate(todo, "mask", None)
            fixed_mask.update({n: ev for n, ev in fresh.items() if n in fixed})
            by_removal = {"mask": {n: fresh[n] if n in fresh else fixed_mask[n] for n in names}}
        with phases(f"seed {seed}: removal baseline"):
            baseline = diffmask.baseline.detach()
            evals = evaluate({**varying, **fixed}, "baseline", baseline)
            by_removal["baseline"] = {n: evals[n] for n in names}
        seconds = {n: _nanmean(ev.values["seconds_per_example"]) for n, ev in fresh.items()}
        per_seed.append(
            {
                "seed": seed,
                "diffmask": diffmask_numbers(ws, results, diffmask.margin),
                "methods": {r: method_numbers(by_removal[r]) for r in REMOVALS},
                "seconds_per_example": {**seconds, "diffmask_extract": dm_seconds},
                "training": {
                    "best_epoch": history.best_epoch,
                    "epochs": history.epochs,
                    "stop_reason": (history.convergence or {}).get("stop_reason"),
                },
                "lambda": float(diffmask.lagrange_multiplier.detach()),
            }
        )
    report = {
        "settings": {
            "config": to_dict(config),
            "n_samples": len(test_ex),
            "seeds": seeds,
            "methods": names,
            "effect_head_titles": "train split without the held-out candidates' titles"
            if effect_unseen
            else "train split",
            "removals": {r: OPERATIONS[r] for r in REMOVALS},
            "subsets": SUBSETS,
            "sd": "sample standard deviation over seeds",
        },
        "environment": environment,
        "per_seed": per_seed,
        "summary": summarize(per_seed, names),
    }
    report["targets"] = targets(report["summary"])
    phases.seconds["total"] = phases.total()
    report["phases_seconds"] = phases.seconds
    return report


def summarize(per_seed: list[dict], names: list[str]) -> dict:
    """Mean and sd over seeds of every DIFFMASK number and every method metric."""
    diffmask = {}
    for subset in SUBSETS:
        keys = [k for k, v in per_seed[0]["diffmask"][subset].items() if isinstance(v, float)]
        diffmask[subset] = {
            k: mean_sd([s["diffmask"][subset].get(k, math.nan) for s in per_seed]) for k in keys
        }
        diffmask[subset]["n_samples"] = per_seed[0]["diffmask"][subset]["n_samples"]
    methods = {}
    for removal in REMOVALS:
        methods[removal] = {}
        for subset in SUBSETS:
            methods[removal][subset] = {}
            for name in names:
                rows = [s["methods"][removal][subset][name] for s in per_seed]
                cell = {m: mean_sd([r[m] for r in rows]) for m in METHOD_METRICS}
                cell["n_examples"] = rows[0]["n_examples"]
                methods[removal][subset][name] = cell
    return {"diffmask": diffmask, "methods": methods}


def _target(name: str, value: float, threshold: float, higher: bool) -> dict:
    if not math.isfinite(value) or not math.isfinite(threshold):
        return {"target": name, "value": value, "threshold": threshold, "met": None, "gap": None}
    gap = max(0.0, threshold - value) if higher else max(0.0, value - threshold)
    return {"target": name, "value": value, "threshold": threshold, "met": gap == 0, "gap": gap}


def targets(summary: dict) -> list[dict]:
    """The issue's targets on the means (and sds) over seeds; ``gap`` = by how much a missed
    target is missed (0 when met)."""
    dm = summary["diffmask"]
    click, all_ = dm["predicted_click"], dm["all"]
    nan = {"mean": math.nan, "sd": math.nan}
    rows = [
        _target(
            "DIFFMASK gold AUPRC on predicted clicks >= 0.95",
            click.get("auprc", nan)["mean"],
            0.95,
            True,
        ),
        _target(
            "DIFFMASK within-margin share (all) >= 0.95",
            all_.get("within_margin_share", nan)["mean"],
            0.95,
            True,
        ),
        _target(
            "DIFFMASK kept share (all) <= 0.3", all_.get("kept_share", nan)["mean"], 0.3, False
        ),
        _target(
            "seed sd of DIFFMASK gold AUPRC on predicted clicks <= 0.02",
            click.get("auprc", nan)["sd"],
            0.02,
            False,
        ),
        _target(
            "seed sd of DIFFMASK within-margin share (all) <= 0.02",
            all_.get("within_margin_share", nan)["sd"],
            0.02,
            False,
        ),
    ]
    base = summary["methods"]["baseline"]["all"]
    labels = {
        "diffmask": "DIFFMASK",
        "diffmask_effect": "DIFFMASK's set, effect-head order,",
        "diffmask_loo": "DIFFMASK's set, leave-one-out order,",
    }
    for name in [n for n in labels if n in base]:
        for metric, label in (
            ("sufficiency_aopc", "sufficiency AOPC"),
            ("deletion_auc", "deletion AUC"),
        ):
            ig = base.get("ig", {}).get(metric, {}).get("mean", math.nan)  # nan without IG
            rows.append(
                _target(
                    f"{labels[name]} {label} (removal baseline, all) <= IG's",
                    base[name][metric]["mean"],
                    ig,
                    False,
                )
            )
    return rows


# ---------------------------------------------------------------------- output
def _num(x, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(cell: dict) -> str:
    if not math.isfinite(cell["mean"]):
        return "—"
    return f"{cell['mean']:.3f} ± {_num(cell['sd'])}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def markdown(report: dict) -> str:
    s, env, summary = report["settings"], report["environment"], report["summary"]
    dm = summary["diffmask"]
    lines = [
        "# News benchmark",
        "",
        f"Config `{s['config_file']}` (recommender `{s['config']['checkpoint']}`); "
        f"{s['n_samples']} held-out `{s['config']['split']}` candidates "
        f"({dm['predicted_click']['n_samples']} predicted clicks, "
        f"{dm['predicted_non_click']['n_samples']} predicted non-clicks); seeds "
        f"{', '.join(map(str, s['seeds']))}; mean ± sample sd over seeds. "
        f"diffmask_effect's head fitted on: {s['effect_head_titles']}.",
        f"Device {env['device']}, torch {env['torch']}, threads {env['threads']}; "
        f"total wall time {report['phases_seconds']['total']:.0f} s.",
        "",
        "## DIFFMASK on the held-out candidates",
        "",
    ]
    rows = []
    for subset, label in SUBSETS.items():
        cells = dm[subset]
        nan = {"mean": math.nan, "sd": math.nan}
        rows.append(
            [label, str(cells["n_samples"])] + [_pm(cells.get(k, nan)) for k in DIFFMASK_METRICS]
        )
    lines += _table(["subset", "n", *DIFFMASK_METRICS.values()], rows)
    lines += ["## DIFFMASK training", ""]
    rows = [
        [
            str(p["seed"]),
            str(len(p["training"]["epochs"])),
            str(p["training"]["best_epoch"]),
            str(p["training"].get("stop_reason")),
            _num(p["lambda"], 1),
        ]
        for p in report["per_seed"]
    ]
    lines += _table(["seed", "epochs", "best epoch", "stopped", "final lambda"], rows)
    lines += ["## Targets", ""]
    rows = [
        [
            t["target"],
            _num(t["value"]),
            _num(t["threshold"]),
            {True: "yes", False: "**no**", None: "n/a"}[t["met"]],
            _num(t["gap"]),
        ]
        for t in report["targets"]
    ]
    lines += _table(["target", "value", "threshold", "met", "gap"], rows)
    for removal in REMOVALS:
        for subset, label in SUBSETS.items():
            block = summary["methods"][removal][subset]
            n = next(iter(block.values()))["n_examples"]
            lines += [f"## Removal `{removal}`, {label} (n = {n})", ""]
            rows = [[name] + [_pm(cell[m]) for m in METHOD_METRICS] for name, cell in block.items()]
            lines += _table(["method", *METHOD_METRICS.values()], rows)
    lines += [
        "Removals: "
        + "; ".join(f"`{r}`: {text}" for r, text in s["removals"].items())
        + ". Every metric explains the model's decision on the original input. "
        "Supporting / opposing rank: where the ranking puts the tokens whose removal lowers / "
        f"raises the decision's probability by more than {EFFECT_THRESHOLD} (leave-one-out "
        "under that removal), as a relative rank (0 = first, 1 = last); random ranks both "
        "groups at about 0.5, the removal curves reward supporting tokens first and opposing "
        "ones last.",
        "",
        "## Wall time",
        "",
    ]
    lines += _table(
        ["phase", "seconds"], [[k, f"{v:.1f}"] for k, v in report["phases_seconds"].items()]
    )
    first = report["per_seed"][0]["seconds_per_example"]
    lines += ["## Attribution seconds per example (first seed)", ""]
    lines += _table(["method", "seconds"], [[k, _num(v, 4)] for k, v in first.items()])
    return "\n".join(lines)


def _finite(obj):
    """NaN and infinities become None (valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_news",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help=f"attribution YAML config ({DEFAULTS['config']})")
    p.add_argument("--n_samples", type=int, help=f"held-out candidates ({DEFAULTS['n_samples']})")
    p.add_argument("--seeds", help=f"comma-separated DIFFMASK seeds ({DEFAULTS['seeds']})")
    p.add_argument("--methods", help=f"comma-separated ({DEFAULTS['methods']})")
    p.add_argument("--out", help=f"output folder ({DEFAULTS['out']})")
    p.add_argument("--quiet", action="store_true", help="no progress bars or training logs")
    p.add_argument(
        "--effect_unseen",
        action="store_true",
        help="fit diffmask_effect's head without the titles of the held-out candidates (by "
        "default it is fitted on the train split's titles, which may share news with them)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long check: defaults become "
        + ", ".join(f"{k}={v}" for k, v in SMOKE.items()),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = SMOKE if args.smoke else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    def go() -> None:
        if args.n_samples < 1:
            raise ValueError(f"--n_samples must be >= 1, got {args.n_samples}")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not seeds:
            raise ValueError("--seeds needs at least one seed")
        names = list(dict.fromkeys(["diffmask", *parse_method_list(args.methods)]))
        config = replace(load_config(AttributionConfig, args.config), n_samples=args.n_samples)
        out = resolve_path(args.out)
        report = run_benchmark(config, seeds, names, out, args.quiet, args.effect_unseen)
        report["settings"]["config_file"] = args.config
        text = markdown(report)
        data = json.dumps(_finite(report), indent=1, allow_nan=False)
        atomic_write_text(out / "bench_news.json", data)
        atomic_write_text(out / "bench_news.md", text)
        print(text)
        print(f"[bench] written to {out / 'bench_news.json'} and {out / 'bench_news.md'}")

    return run_cli(go, "bench_news")


if __name__ == "__main__":
    sys.exit(main())
