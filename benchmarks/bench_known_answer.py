"""Known-answer benchmark: which tokens decide a classifier whose decisive positions are known?

    python benchmarks/bench_known_answer.py [--seeds 0,1,2] [--fast]

A small BERT ``AutoModelForSequenceClassification``-style classifier (2 layers, hidden 64) is
trained on the key-count task (``attribution_analysis/data/known_answer.py``: the label is the
number of key tokens in the sequence, so the key positions are exactly the tokens the decision
depends on), then explained through the ``transformers`` adapter by DIFFMASK with the library
defaults (one training run per seed) and by Integrated Gradients, saliency, leave-one-out,
random and a uniform score. It prints the Jensen-Shannon divergence (base 2) to the key
positions and AUPRC as mean +- sd over seeds, DIFFMASK's training epochs, convergence,
within-margin share and kept share, and checks the targets: DIFFMASK JS <= 0.05 and below every
baseline. The default run takes a few minutes on 2 CPU cores (``--fast``: well under one).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from attribution_analysis.evaluation.known_answer import (
    BASELINES,
    KnownAnswerSetup,
    run_known_answer,
)

JS_TARGET = 0.05
FAST = KnownAnswerSetup(
    n_classifier_train=4000,
    classifier_epochs=4,
    n_diffmask_train=1000,
    n_val=200,
    n_test=200,
    ig_steps=16,
)


def _cell(summary: dict, key: str, digits: int = 4) -> str:
    mean, sd = summary[key]
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(result: dict) -> str:
    """Markdown tables of the result of :func:`run_known_answer`."""
    s = result["summary"]
    lines = [
        "| method | JS to key positions ↓ | AUPRC ↑ | s / example |",
        "|---|---|---|---|",
    ]
    for name in ("diffmask", *BASELINES):
        row = s[name]
        lines.append(
            f"| {name} | {_cell(row, 'js')} | {_cell(row, 'auprc')} | "
            f"{row['seconds_per_example'][0]:.5f} |"
        )
    d = result["per_seed"]["diffmask"]
    lines += [
        "",
        "| DIFFMASK seed | epochs | converged | within margin | kept share | distinct scores |"
        " train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in zip(result["seeds"], d):
        lines.append(
            f"| {seed} | {r['epochs']} | {r['converged']} | {r['within_margin']:.3f} | "
            f"{r['kept_share']:.3f} | {r['distinct_scores']} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def targets(result: dict) -> list[tuple[str, bool, str]]:
    """``(target, met, detail)`` for the benchmark's targets."""
    s = result["summary"]
    js = s["diffmask"]["js"][0]
    best = min(BASELINES, key=lambda n: s[n]["js"][0])
    return [
        (f"DIFFMASK JS <= {JS_TARGET}", js <= JS_TARGET, f"{js:.4f} (gap {js - JS_TARGET:+.4f})"),
        (
            "DIFFMASK JS below every baseline",
            js < s[best]["js"][0],
            f"{js:.4f} vs best baseline {best} {s[best]['js'][0]:.4f}",
        ),
        (
            "every DIFFMASK run converged",
            all(r["converged"] for r in result["per_seed"]["diffmask"]),
            ", ".join(str(r["epochs"]) for r in result["per_seed"]["diffmask"]) + " epochs",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_known_answer", description=__doc__)
    p.add_argument("--seeds", default="0,1,2", help="DIFFMASK seeds (comma-separated)")
    p.add_argument("--fast", action="store_true", help="smaller sizes (seconds, for tests)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    setup = FAST if args.fast else KnownAnswerSetup()
    t0 = time.perf_counter()
    result = run_known_answer(setup, seeds)
    print(
        f"Device: cpu ({platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {time.perf_counter() - t0:.0f} s in all"
    )
    print(f"Classifier accuracy on held-out examples: {result['classifier_accuracy']:.4f}\n")
    print(table(result))
    print("\n| target | met | measured |\n|---|---|---|")
    for name, met, detail in targets(result):
        print(f"| {name} | {'yes' if met else 'NO'} | {detail} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
