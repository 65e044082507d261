"""How many integration steps Integrated Gradients needs on the recommender: each step count
against the most steps, on the attribution config's held-out candidates, in one run.

    python benchmarks/bench_ig_steps.py [--config configs/attribution/nrms_bert_finetune.yaml]
        [--steps 10,20,30,50] [--n_samples N]

For each step count: seconds (the ratio to the most steps' time is the number to read; the
machine is shared), the median and 90th percentile of the relative completeness error
``|sum IG - (F(x) - F(x'))| / |F(x) - F(x')|`` per candidate, and, against the most steps'
scores, the mean and smallest per-candidate Spearman correlation over the scorable tokens and
the share of candidates with the same top token. It uses the config's recommender (trained
first when missing) and IG settings except ``n_steps``; ``--n_samples`` overrides the config's.
Runtime on the 2-core CPU with the default config: about 2.5 minutes (100 candidates).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from attribution_analysis.app.cli import run_cli
from attribution_analysis.app.comparison import build_methods
from attribution_analysis.app.workspace import open_workspace, split_examples
from attribution_analysis.config import AttributionConfig, load_config
from attribution_analysis.data.batches import split_batch
from attribution_analysis.evaluation.sanity import spearman


def ig_scores(ws, batches, steps: int) -> tuple[list[np.ndarray], list[float], float]:
    """Scores over the scorable tokens of every candidate, relative completeness errors, and
    seconds, for IG with ``steps`` integration steps."""
    method = build_methods(ws, ["ig"], None, steps)["ig"]
    device = next(ws.model.parameters()).device
    scores, errors = [], []
    t0 = time.perf_counter()
    for batch in batches:
        ids, mask, context, _ = split_batch(batch, device)
        context = method.adapter.prepare_context(context)
        s, extras = method.attribute(ids, mask, context, return_extras=True)
        scorable = method.scorable(ids, mask)
        scores += [s[i][scorable[i]].double().cpu().numpy() for i in range(len(ids))]
        errors += extras["completeness_error"].tolist()
    return scores, errors, time.perf_counter() - t0


def agreement(scores: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Mean and smallest Spearman correlation per candidate, and the share with the same top
    token (candidates with a constant side are left out of the correlations)."""
    rhos = np.array([spearman(a, b) for a, b in zip(scores, reference)])
    top = [int(np.argmax(a) == np.argmax(b)) for a, b in zip(scores, reference) if len(a)]
    finite = rhos[~np.isnan(rhos)]
    return {
        "spearman_mean": float(finite.mean()) if len(finite) else float("nan"),
        "spearman_min": float(finite.min()) if len(finite) else float("nan"),
        "same_top_token": float(np.mean(top)) if top else float("nan"),
    }


def table(rows: list[dict], reference_steps: int) -> str:
    """The Markdown table of :func:`main`'s rows."""
    lines = [
        f"| steps | seconds | time ratio to {reference_steps} | median completeness error | "
        f"p90 | Spearman with {reference_steps} (mean) | (min) | same top token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['seconds']:.1f} | {r['time_ratio']:.2f} | "
            f"{r['completeness_median']:.2e} | {r['completeness_p90']:.2e} | "
            f"{r['spearman_mean']:.4f} | {r['spearman_min']:.3f} | {r['same_top_token']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ig_steps", description=__doc__)
    parser.add_argument("--config", default="configs/attribution/nrms_bert_finetune.yaml")
    parser.add_argument("--steps", default="10,20,30,50")
    parser.add_argument("--n_samples", type=int, default=None)
    args = parser.parse_args(argv)

    def go() -> None:
        steps = sorted({int(s) for s in args.steps.split(",")})
        if not steps or steps[0] < 1:
            raise ValueError(f"--steps must be positive integers, got {args.steps!r}")
        config = load_config(AttributionConfig, args.config)
        if args.n_samples is not None:
            config.n_samples = args.n_samples
        ws = open_workspace(config, quiet=True)
        _, _, test = split_examples(ws)
        batches = list(ws.loader(test))
        runs = {s: ig_scores(ws, batches, s) for s in steps}
        reference = runs[steps[-1]]
        rows = []
        for s in steps:
            scores, errors, seconds = runs[s]
            rows.append(
                {
                    "steps": s,
                    "seconds": seconds,
                    "time_ratio": seconds / reference[2],
                    "completeness_median": float(np.nanmedian(errors)),
                    "completeness_p90": float(np.nanpercentile(errors, 90)),
                    **agreement(scores, reference[0]),
                }
            )
        print(f"IG steps on {len(test)} held-out candidates of {args.config}")
        print(table(rows, steps[-1]))

    return run_cli(go, "bench_ig_steps")


if __name__ == "__main__":
    sys.exit(main())
