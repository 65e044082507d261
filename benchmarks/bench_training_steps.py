"""Training cost of two shortcuts, each against the path without it, measured in one run.

    python benchmarks/bench_training_steps.py [--parts diffmask,recommender] [--epochs 3]
        [--steps 20] [--attribution_config configs/attribution/nrms_bert_finetune.yaml]
        [--recommender_configs <comma-separated recommender configs>]

1. **DIFFMASK** (the default ``per_example`` constraint): a training step runs its masked
   passes with gradient only for the examples at or beyond the margin (the hinge is flat
   elsewhere), against full-batch passes with gradient. ``train_diffmask`` runs ``--epochs``
   epochs of the attribution config's DIFFMASK (its recommender, trained first when missing)
   once each way, same seed; the table gives seconds per epoch, the ratio, and the largest
   difference between the two runs' epoch summaries (the gradient is the same up to float
   rounding, so the runs should agree closely).
2. **Recommender** (``train.history_cache_steps``): history-only titles' news vectors reused
   for up to 10 steps, against computing them at every step (``history_plm_grad: false``),
   for ``nrms_minilm.yaml`` and ``poison_poisoned.yaml`` by default.
   Untrained weights of each recommender config's architecture (the cost depends on shapes
   only); blocks of ``--steps`` training steps (forward, backward, optimizer), alternating,
   twice; the table gives the mean seconds per step of the faster block of each path.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from attribution_analysis.app.analysis import train_on_examples
from attribution_analysis.app.workspace import open_workspace, split_examples
from attribution_analysis.config import AttributionConfig, RecommenderConfig, load_config
from attribution_analysis.data.datasets import ClickSamples, collate_clicks
from attribution_analysis.data.loading import ensure_synthetic, load_mind_data
from attribution_analysis.models.click_scorer import ClickScorer
from attribution_analysis.models.history_cache import HistoryVectorCache
from attribution_analysis.models.lower_cache import build_lower_cache
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import build_nrms

SUMMARY_KEYS = ("l0", "lambda", "divergence", "val_l0", "val_within_margin")


def diffmask_part(config_path: str, epochs: int) -> list[str]:
    config = load_config(AttributionConfig, config_path)
    config.diffmask.training.n_epochs = epochs
    config.diffmask.training.convergence = None  # exactly `epochs` epochs each way
    ws = open_workspace(config, quiet=True)
    train_ex, val_ex, _ = split_examples(ws)
    runs = {}
    for name, hinge_only in (("hinge-only (default)", True), ("full batch", False)):
        diffmask = ws.build_diffmask()
        if not hinge_only:  # every masked pass over the whole batch with gradient
            diffmask._hinge_only_gradient = lambda: False
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            train_on_examples(ws, Path(out), train_ex, val_ex, quiet=True, diffmask=diffmask)
            seconds = time.perf_counter() - t0
            history = json.loads((Path(out) / "training_history.json").read_text())
        runs[name] = (seconds / epochs, history["epochs"])
    (fast, fast_rows), (full, full_rows) = runs.values()
    assert len(fast_rows) == len(full_rows) == epochs
    diff = max(
        abs(a[k] - b[k]) for a, b in zip(fast_rows, full_rows) for k in SUMMARY_KEYS if k in a
    )
    n = len(train_ex)
    lines = [
        f"DIFFMASK: {config_path}, {n} training and {len(val_ex)} validation examples, "
        f"{epochs} epochs each way",
        "",
        "| masked passes with gradient | s / epoch | ratio to full batch |",
        "|---|---|---|",
        f"| hinge-only (default) | {fast:.1f} | {fast / full:.2f} |",
        f"| full batch | {full:.1f} | 1.00 |",
        "",
        f"Largest difference between the two runs' epoch summaries ({', '.join(SUMMARY_KEYS)}): "
        f"{diff:.2g}",
    ]
    return lines


def recommender_part(config_path: str, steps: int, max_age: int = 10) -> list[str]:
    config = load_config(RecommenderConfig, config_path)
    ensure_synthetic(config.data)
    tokenizer = load_tokenizer(config.model)
    data = load_mind_data(config.data, tokenizer)
    torch.manual_seed(0)
    model = build_nrms(config.model, len(tokenizer)).train()
    lower = None
    if model.news_encoder.caches_lower_layers:
        lower = build_lower_cache(model, data.table, 256, "float32")
    samples = ClickSamples(data.train, data.table, config.data.npratio, config.data.max_history)
    loader = DataLoader(
        samples,
        batch_size=config.train.batch_size,
        shuffle=True,
        collate_fn=collate_clicks,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [b for _, b in zip(range(steps), loader)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def block(cache: HistoryVectorCache | None) -> float:
        scorer = ClickScorer(model, False, cache)
        t0 = time.perf_counter()
        for batch in batches:
            logits = scorer(batch, data.table, lower)
            loss = torch.nn.functional.cross_entropy(logits, batch["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cache is not None:
                cache.advance()
        return (time.perf_counter() - t0) / len(batches)

    times: dict[str, list[float]] = {"every step": [], f"cache, {max_age} steps": []}
    for _ in range(2):
        times["every step"].append(block(None))
        times[f"cache, {max_age} steps"].append(block(HistoryVectorCache(len(data.table), max_age)))
    base = min(times["every step"])
    lines = [
        f"Recommender: {config_path} (fine_tune_layers {config.model.fine_tune_layers}), "
        f"{steps} steps of batch {config.train.batch_size} per block",
        "",
        "| history-only titles' vectors | s / step | ratio to every step |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {min(values):.3f} | {min(values) / base:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> str:
    """Run the parts, print the tables and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="diffmask,recommender")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--attribution_config", default="configs/attribution/nrms_bert_finetune.yaml"
    )
    parser.add_argument(
        "--recommender_configs",
        default="configs/recommender/nrms_minilm.yaml,configs/recommender/poison_poisoned.yaml",
    )
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    out = [
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "",
    ]
    if "diffmask" in parts:
        out += diffmask_part(args.attribution_config, args.epochs) + [""]
    if "recommender" in parts:
        for path in args.recommender_configs.split(","):
            out += recommender_part(path, args.steps) + [""]
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main()
