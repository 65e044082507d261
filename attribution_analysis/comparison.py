"""Run several attribution methods on the same held-out examples and write the comparison
table (Markdown, CSV, JSON) and the mean deletion/insertion curves (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from attribution_analysis.evaluation.compare import (
    comparison_table,
    evaluate_methods,
    markdown_table,
    mean_curves,
)
from attribution_analysis.evaluation.removal import OPERATIONS
from attribution_analysis.evaluation.sanity import sanity_check
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.train_diffmask import rebind_diffmask
from attribution_analysis.methods.registry import build_method
from attribution_analysis.methods.result import merge_subwords
from attribution_analysis.pipeline import Workspace, gold_token_labels, split_examples
from attribution_analysis.reporting.plots import plot_curves
from attribution_analysis.utils.io import atomic_write_json, atomic_write_text


def build_methods(
    ws: Workspace,
    names: list[str],
    diffmask: DIFFMASK | None,
    ig_steps: int,
    model=None,
) -> dict[str, AttributionMethod]:
    """Instantiate the named methods for the workspace's recommender (or ``model``)."""
    model = model if model is not None else ws.model
    tok = ws.tokenizer
    common = {"special_token_ids": tok.all_special_ids, "seed": ws.config.seed}
    ids = {"pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id}
    methods: dict[str, AttributionMethod] = {}
    for name in names:
        if name == "diffmask":
            if diffmask is None:
                raise ValueError("diffmask requested but no DIFFMASK given")
            methods[name] = build_method(name, model, diffmask=diffmask, seed=ws.config.seed)
        elif name == "ig":
            methods[name] = build_method(name, model, n_steps=ig_steps, **common, **ids)
        elif name == "leave_one_out":
            methods[name] = build_method(name, model, **common, **ids)
        else:
            methods[name] = build_method(name, model, **common)
    return methods


def gold_lookup(ws: Workspace):
    """``(meta, input_ids [tokens]) -> 0/1 per token`` from the corpus's gold rationales."""
    special = set(ws.tokenizer.all_special_ids)

    def gold_for(meta, input_ids: torch.Tensor):
        words = ws.data.rationales.get((meta or {}).get("news_id"))
        ids = input_ids.tolist()
        tokens = ws.tokenizer.convert_ids_to_tokens(ids)
        merged, _, index = merge_subwords(tokens, [0.0] * len(ids), [i not in special for i in ids])
        return gold_token_labels(merged, index, len(ids), words)

    return gold_for


SANITY_EXAMPLES = 32
SANITY_LAYERS = 2


def sanity_rows(ws: Workspace, names: list[str], diffmask, examples) -> dict[str, float]:
    """Mean Spearman correlation of each method's attributions before and after randomising the
    news encoder's top PLM layers and head (Adebayo et al. 2018; lower = depends on the model)."""
    out = {}
    for name in names:

        def factory(model, name=name):
            dm = rebind_diffmask(diffmask, model) if name == "diffmask" else None
            return build_methods(ws, [name], dm, ws.config.ig_steps, model)[name]

        result = sanity_check(
            factory,
            ws.model,
            ws.loader(examples),
            n_layers=SANITY_LAYERS,
            seed=ws.config.seed,
        )
        out[name] = result["spearman_mean"]
    return out


def run_comparison(
    ws: Workspace,
    names: list[str],
    diffmask: DIFFMASK | None,
    out_dir: Path,
    removal: str = "mask",
    quiet: bool = False,
) -> list[dict]:
    """Evaluate the methods on the config's held-out examples and write the table files."""
    _, _, test = split_examples(ws)
    methods = build_methods(ws, names, diffmask, ws.config.ig_steps)
    device = next(ws.model.parameters()).device
    evals = evaluate_methods(
        methods,
        ws.loader(test),
        gold_lookup(ws),
        removal=removal,
        mask_token_id=ws.tokenizer.mask_token_id,
        pad_token_id=ws.tokenizer.pad_token_id,
        baseline_embedding=diffmask.baseline.detach() if diffmask is not None else None,
        device=device,
        quiet=quiet,
    )
    rows = comparison_table(evals, seed=ws.config.seed)
    sanity = sanity_rows(ws, names, diffmask, test[:SANITY_EXAMPLES])
    for row in rows:
        row["sanity_spearman"] = sanity[row["method"]]
    table = markdown_table(rows)
    note = f"\nRemoval operation: `{removal}` ({OPERATIONS[removal]}). Examples: {len(test)}.\n"
    atomic_write_text(out_dir / "comparison.md", table + note)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "comparison.csv", buffer.getvalue())
    atomic_write_json(out_dir / "comparison.json", {"removal": removal, "rows": rows})
    for kind in ("deletion", "insertion"):
        plot_curves(
            mean_curves(evals, kind),
            f"{kind.capitalize()} curves (mean over examples)",
            "click probability",
            out_dir / f"{kind}_curves.png",
        )
    print(table + note)
    return rows
