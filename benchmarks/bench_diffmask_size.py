"""DIFFMASK's held-out numbers against the size of its training set, over several seeds.

    python benchmarks/bench_diffmask_size.py [--config configs/attribution/nrms_bert_finetune.yaml]
        [--sizes 2000,6000] [--seeds 0,1,2] [--n_samples 500] [--n_epochs CAP]
        [--out output/bench_diffmask_size] [--verbose]

For each training-set size (``diffmask.train_examples``) and seed it trains DIFFMASK from
scratch on the config's recommender (trained first when missing) and measures, on the same
``n_samples`` held-out candidates as ``benchmarks/bench_news.py``, the share within the margin,
the kept share and the gold AUPRC (all candidates and predicted clicks), with the epochs run,
the delivered epoch and how training stopped. Rows are printed as JSON lines as they come and
written to ``<out>/bench_diffmask_size.json``; per-size means and sds at the end. Runs on any
device the config names (``device: cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_news import diffmask_numbers  # noqa: E402

from attribution_analysis.app.analysis import _train  # noqa: E402
from attribution_analysis.app.cli import run_cli  # noqa: E402
from attribution_analysis.app.workspace import open_workspace, split_examples  # noqa: E402
from attribution_analysis.config import AttributionConfig, load_config  # noqa: E402
from attribution_analysis.methods.diffmask.train_diffmask import (  # noqa: E402
    extract_attributions_diffmask,
)
from attribution_analysis.utils.devices import seed_everything  # noqa: E402
from attribution_analysis.utils.io import atomic_write_text  # noqa: E402

KEYS = ("within_margin_share", "kept_share", "auprc")


def run(config: AttributionConfig, sizes, seeds, out: Path, quiet: bool) -> list[dict]:
    seed_everything(config.seed)
    base = open_workspace(config, True)
    rows: list[dict] = []
    for size in sizes:
        ws = replace(
            base, config=replace(config, diffmask=replace(config.diffmask, train_examples=size))
        )
        train_ex, val_ex, test_ex = split_examples(ws)
        for seed in seeds:
            ws_s = replace(ws, config=replace(ws.config, seed=seed))
            t0 = time.perf_counter()
            diffmask = ws_s.build_diffmask()
            run_dir = out / f"n{size}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            history = _train(ws_s, diffmask, run_dir, train_ex, val_ex, quiet)
            device = str(next(diffmask.parameters()).device)
            results = extract_attributions_diffmask(
                diffmask, ws.loader(test_ex), len(test_ex), device=device,
                tokenizer=ws.tokenizer, quiet=True,
            )  # fmt: skip
            numbers = diffmask_numbers(ws, results, diffmask.margin)
            row = {
                "train_examples": size,
                "seed": seed,
                "epochs": len(history.epochs),
                "best_epoch": history.best_epoch,
                "stop_reason": (history.convergence or {}).get("stop_reason"),
                "seconds": round(time.perf_counter() - t0, 1),
                **{
                    f"{subset}_{k}": numbers[subset].get(k)  # None: empty subset
                    for subset in ("all", "predicted_click")
                    for k in KEYS
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_text(out / "bench_diffmask_size.json", json.dumps(rows, indent=1))
    return rows


def summary(rows: list[dict]) -> list[str]:
    lines = ["| train examples | epochs | within margin (all) | kept share (all) | "
             "gold AUPRC (predicted clicks) |", "|---|---|---|---|---|"]  # fmt: skip
    for size in dict.fromkeys(r["train_examples"] for r in rows):
        group = [r for r in rows if r["train_examples"] == size]

        def cell(key: str, group=group) -> str:
            values = [r[key] for r in group if r[key] is not None and math.isfinite(r[key])]
            if not values:
                return "—"
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

        epochs = ", ".join(f"{r['epochs']} ({r['stop_reason']})" for r in group)
        lines.append(
            f"| {size} | {epochs} | {cell('all_within_margin_share')} | "
            f"{cell('all_kept_share')} | {cell('predicted_click_auprc')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_diffmask_size", description=__doc__)
    p.add_argument("--config", default="configs/attribution/nrms_bert_finetune.yaml")
    p.add_argument("--sizes", default="2000,6000")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n_samples", type=int, default=500)
    p.add_argument("--n_epochs", type=int, default=None, help="epoch cap (default: config's)")
    p.add_argument("--out", default="output/bench_diffmask_size")
    p.add_argument("--verbose", action="store_true", help="per-epoch lines of DIFFMASK training")
    args = p.parse_args(argv)

    def go() -> None:
        config = replace(load_config(AttributionConfig, args.config), n_samples=args.n_samples)
        if args.n_epochs is not None:
            training = replace(config.diffmask.training, n_epochs=args.n_epochs)
            config = replace(config, diffmask=replace(config.diffmask, training=training))
        sizes = [int(x) for x in args.sizes.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
        rows = run(config, sizes, seeds, Path(args.out), quiet=not args.verbose)
        print("\n".join(summary(rows)))

    return run_cli(go, "bench_diffmask_size")


if __name__ == "__main__":
    sys.exit(main())
