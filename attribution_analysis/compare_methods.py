"""Compare attribution methods on the same held-out examples.

    python -m attribution_analysis.compare_methods --config configs/attribution/nrms_bert_finetune.yaml \\
        --methods diffmask,ig,attention,random --n_samples 100

DIFFMASK comes from ``--checkpoint`` or is trained on the fly. Writes ``comparison.md``,
``comparison.csv``, ``comparison.json`` and ``deletion_curves.png`` / ``insertion_curves.png``
into ``<output_dir>/compare_<YYYYmmdd_HHMMSS>/`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import datetime
from pathlib import Path

import torch

from attribution_analysis.cli_utils import run_cli
from attribution_analysis.config import AttributionConfig, load_config, resolve_path, to_dict
from attribution_analysis.evaluation.compare import (
    comparison_table,
    evaluate_methods,
    markdown_table,
    mean_curves,
)
from attribution_analysis.evaluation.removal import OPERATIONS
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.train_diffmask import load_diffmask_checkpoint
from attribution_analysis.methods.registry import build_method, parse_method_list
from attribution_analysis.methods.result import merge_subwords
from attribution_analysis.pipeline import (
    Workspace,
    gold_token_labels,
    open_workspace,
    split_examples,
)
from attribution_analysis.reporting.plots import plot_curves
from attribution_analysis.utils.devices import seed_everything
from attribution_analysis.utils.io import atomic_write_json, atomic_write_text


def build_methods(
    ws: Workspace, names: list[str], diffmask: DIFFMASK | None, ig_steps: int
) -> dict[str, AttributionMethod]:
    """Instantiate the named methods for the workspace's recommender."""
    tok = ws.tokenizer
    common = {"special_token_ids": tok.all_special_ids, "seed": ws.config.seed}
    ids = {"pad_token_id": tok.pad_token_id, "mask_token_id": tok.mask_token_id}
    methods: dict[str, AttributionMethod] = {}
    for name in names:
        if name == "diffmask":
            if diffmask is None:
                raise ValueError("diffmask requested but no DIFFMASK given")
            methods[name] = build_method(name, ws.model, diffmask=diffmask, seed=ws.config.seed)
        elif name == "ig":
            methods[name] = build_method(name, ws.model, n_steps=ig_steps, **common, **ids)
        elif name == "leave_one_out":
            methods[name] = build_method(name, ws.model, **common, **ids)
        else:
            methods[name] = build_method(name, ws.model, **common)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare_methods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="attribution YAML config")
    p.add_argument("--methods", default="diffmask,ig,attention,random", help="comma-separated")
    p.add_argument("--n_samples", type=int, help="held-out examples")
    p.add_argument("--checkpoint", help="trained DIFFMASK checkpoint (else trained on the fly)")
    p.add_argument("--removal", default="mask", choices=sorted(OPERATIONS), help="removal op")
    p.add_argument("--ig_steps", type=int, help="Integrated Gradients steps")
    p.add_argument("--output_dir", help="parent folder of the compare_<timestamp> folder")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        from attribution_analysis.analysis import train_for_workspace

        config = load_config(AttributionConfig, args.config)
        for key in ("n_samples", "ig_steps", "output_dir", "seed"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        names = parse_method_list(args.methods)
        seed_everything(config.seed)
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        out_dir = resolve_path(config.output_dir) / f"compare_{stamp}"
        atomic_write_json(out_dir / "config.json", to_dict(config))
        ws = open_workspace(config, args.quiet)
        diffmask = None
        if "diffmask" in names:
            if args.checkpoint:
                diffmask = load_diffmask_checkpoint(args.checkpoint, ws.model)
            else:
                diffmask = train_for_workspace(ws, out_dir / "diffmask", args.quiet)
        run_comparison(ws, names, diffmask, out_dir, args.removal, args.quiet)
        print(f"[result] comparison written to {out_dir}")

    return run_cli(go, "compare_methods")


if __name__ == "__main__":
    sys.exit(main())
