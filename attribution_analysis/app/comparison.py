"""Run several attribution methods on the same held-out examples and write the comparison
table (Markdown, CSV, JSON) and the mean deletion/insertion curves (PNG)."""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from collections.abc import Collection
from pathlib import Path

import torch

from attribution_analysis.app.workspace import Workspace, gold_token_labels, split_examples
from attribution_analysis.evaluation.compare import (
    comparison_table,
    evaluate_methods,
    markdown_table,
    mean_curves,
)
from attribution_analysis.evaluation.removal import OPERATIONS
from attribution_analysis.evaluation.sanity import fresh_diffmask_like, sanity_check
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.effect_head import EffectHead
from attribution_analysis.methods.diffmask.train_diffmask import rebind_diffmask
from attribution_analysis.methods.explained_model import make_adapter
from attribution_analysis.methods.registry import TRAINED_DIFFMASK, build_method
from attribution_analysis.methods.result import merge_subwords
from attribution_analysis.reporting.plots import plot_curves
from attribution_analysis.utils.io import atomic_write_json, atomic_write_text
from attribution_analysis.utils.modes import eval_mode


def build_methods(
    ws: Workspace,
    names: list[str],
    diffmask: DIFFMASK | None,
    ig_steps: int,
    model=None,
    quiet: bool = True,
    effect_head: EffectHead | None = None,
    effect_exclude: Collection[str] = (),
) -> dict[str, AttributionMethod]:
    """Instantiate the named methods for the workspace's recommender (or ``model``): every
    method gets the same token ids and seed, plus its own options (IG's steps, the trained
    DIFFMASK; ``diffmask_effect``: ``effect_head`` when given, else a head fitted on
    :func:`effect_titles` (without the news ids ``effect_exclude``), its penalty chosen for
    :func:`effect_users`; ``quiet``: no progress bar while fitting it). Under several
    processes every process fits the same head (the same titles and seed; bit-identical on
    one CPU, GPU kernels may differ in the last bits)."""
    model = model if model is not None else ws.model
    tok = ws.tokenizer
    common = {
        "special_token_ids": tok.all_special_ids,
        "pad_token_id": tok.pad_token_id,
        "mask_token_id": tok.mask_token_id,
        "seed": ws.config.seed,
    }
    options = {"ig": {"n_steps": ig_steps}, **{n: {"diffmask": diffmask} for n in TRAINED_DIFFMASK}}
    if "diffmask_effect" in names and effect_head is not None:
        options["diffmask_effect"]["effect_head"] = effect_head
    elif "diffmask_effect" in names and diffmask is not None:  # else refused when built
        options["diffmask_effect"]["titles"] = effect_titles(
            ws, ws.config.effect_titles, exclude=effect_exclude
        )
        options["diffmask_effect"]["users"] = effect_users(ws, model)
        options["diffmask_effect"]["quiet"] = quiet or not ws.is_main
    return {name: build_method(name, model, **common, **options.get(name, {})) for name in names}


def effect_titles(
    ws: Workspace,
    limit: int,
    batch_size: int = 64,
    exclude: Collection[str] = (),
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(input_ids, attention_mask)`` of the titles that the train split's impressions
    show (history and candidates, except the news ids ``exclude``; a sample of ``limit`` chosen
    with the config's seed when there are more), in token-table order."""
    shown = (n for imp in ws.data.train for n in (*imp.history, *imp.candidates))
    skip = set(exclude)
    ids = [n for n in dict.fromkeys(shown) if n not in skip]
    if not ids:
        raise ValueError("no train-split title is left to fit diffmask_effect's effect head on")
    if len(ids) > limit:
        gen = torch.Generator().manual_seed(ws.config.seed)
        ids = [ids[i] for i in torch.randperm(len(ids), generator=gen)[:limit].tolist()]
    rows = torch.tensor(sorted(ws.data.table.lookup(ids)), dtype=torch.long)
    return [ws.data.table.rows(chunk) for chunk in rows.split(batch_size)]


@torch.no_grad()
def effect_users(ws: Workspace, model=None) -> torch.Tensor:
    """The user vectors ``[examples, dim]`` of the workspace's DIFFMASK training examples
    (:func:`split_examples`) under ``model`` (default: the workspace's): the effect head's
    ridge penalty is the one that orders held-out titles best for them. Only the users are
    read, never a label."""
    model = model if model is not None else ws.model
    adapter = make_adapter(model)
    device = next(model.parameters()).device
    train, _, _ = split_examples(ws)
    users = []
    with eval_mode(model):
        for batch in ws.loader(train):
            context = {k: batch[k].to(device) for k in ("history_emb", "history_mask")}
            users.append(adapter.context_vector(adapter.prepare_context(context)).float().cpu())
    return torch.cat(users)


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
SANITY_DIR = "sanity_diffmask"
"""Folder (inside the comparison folder) of the DIFFMASK retrained on the randomised model."""
SANITY_COLUMNS = ("sanity_spearman", "sanity_spearman_retrained")
"""The sanity columns: trained parts kept fixed, and retrained on the randomised model."""


def retrain_diffmask(
    ws: Workspace, diffmask: DIFFMASK, model, run_dir: Path, quiet: bool = True
) -> DIFFMASK:
    """A DIFFMASK with ``diffmask``'s settings trained from scratch for ``model`` (a model of the
    recommender's shape, e.g. its randomised copy) the way the analysis trains one: probe
    initialised from the config's seed, the workspace's DIFFMASK train/validation examples, the
    config's training hyper-parameters, checkpoints and history under ``run_dir`` (resumed from
    there when present). The context stays the workspace's (the original model's history
    vectors)."""
    from attribution_analysis.app.analysis import (
        train_for_workspace,  # analysis imports this module
    )

    fresh = fresh_diffmask_like(diffmask, model, seed=ws.config.seed)
    return train_for_workspace(ws, Path(run_dir), quiet, diffmask=fresh)


def sanity_rows(
    ws: Workspace,
    names: list[str],
    diffmask: DIFFMASK | None,
    examples,
    out_dir: Path | None = None,
    quiet: bool = True,
    retrain: bool = True,
    effect_head: EffectHead | None = None,
) -> dict[str, dict[str, float | None]]:
    """Model-randomisation sanity check of each method (Adebayo et al. 2018): mean Spearman
    correlation of its attributions before and after randomising the news encoder's top
    ``SANITY_LAYERS`` PLM layers and head (range [-1, 1]; lower = depends on the model).

    Returns ``{name: {"sanity_spearman": ..., "sanity_spearman_retrained": ...}}``:

    * ``sanity_spearman`` (fixed probe): the method rebuilt on the randomised model; DIFFMASK,
      ``diffmask_loo`` and ``diffmask_effect`` keep the trained probe and baseline
      (:func:`rebind_diffmask`), ``diffmask_effect`` also its effect head (``effect_head``, or
      one fitted on the original model).
    * ``sanity_spearman_retrained``: DIFFMASK's probe and baseline retrained from scratch on the
      randomised model (:func:`retrain_diffmask`, checkpoints in ``out_dir / SANITY_DIR``, a
      temporary folder without ``out_dir``); None for every other method (``diffmask_loo``
      and ``diffmask_effect`` included: the retraining is measured once, for DIFFMASK), and
      for DIFFMASK when ``retrain`` is false.
    """
    batches = list(ws.loader(examples))
    if "diffmask_effect" in names and effect_head is None:
        built = build_methods(ws, ["diffmask_effect"], diffmask, ws.config.ig_steps, quiet=quiet)
        effect_head = built["diffmask_effect"].effect_head
    out: dict[str, dict[str, float | None]] = {}
    for name in names:

        def factory(model, name=name):
            dm = rebind_diffmask(diffmask, model) if name in TRAINED_DIFFMASK else None
            return build_methods(ws, [name], dm, ws.config.ig_steps, model,
                                 effect_head=effect_head)[name]  # fmt: skip

        fixed = sanity_check(
            factory, ws.model, batches, n_layers=SANITY_LAYERS, seed=ws.config.seed
        )
        retrained = None
        if name == "diffmask" and retrain:
            retrained = _retrained_sanity(ws, diffmask, factory, batches, out_dir, quiet)
        out[name] = dict(zip(SANITY_COLUMNS, (fixed["spearman_mean"], retrained)))
    return out


def _retrained_sanity(ws: Workspace, diffmask, factory, batches, out_dir, quiet) -> float:
    """Mean Spearman correlation between the trained DIFFMASK's attributions on the original
    model (``factory``) and those of a DIFFMASK retrained from scratch on the randomised copy."""
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            run_dir = Path(out_dir) / SANITY_DIR
        else:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not quiet and ws.is_main:
            print(f"[sanity] retraining DIFFMASK on the randomised model in {run_dir}")

        def retrained(model):
            dm = retrain_diffmask(ws, diffmask, model, run_dir, quiet)
            return build_methods(ws, ["diffmask"], dm, ws.config.ig_steps, model)["diffmask"]

        result = sanity_check(
            factory,
            ws.model,
            batches,
            n_layers=SANITY_LAYERS,
            seed=ws.config.seed,
            randomised_factory=retrained,
        )
    return result["spearman_mean"]


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
    methods = build_methods(ws, names, diffmask, ws.config.ig_steps, quiet=quiet)
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
        accelerator=ws.accelerator,
    )
    rows = comparison_table(evals, seed=ws.config.seed)
    sanity_examples = test[:SANITY_EXAMPLES]
    retrain = ws.config.sanity_retrain
    head = getattr(methods.get("diffmask_effect"), "effect_head", None)
    sanity = sanity_rows(ws, names, diffmask, sanity_examples, out_dir=out_dir, quiet=quiet,
                         retrain=retrain, effect_head=head)  # fmt: skip
    for row in rows:
        row.update(sanity[row["method"]])
    table = markdown_table(rows)
    note = (
        f"\nRemoval operation: `{removal}` ({OPERATIONS[removal]}). Examples: {len(test)}.\n"
        f"Sanity check: the top {SANITY_LAYERS} PLM layers and the head of the news encoder "
        f"re-initialised (seed {ws.config.seed}), {len(sanity_examples)} examples.\n"
    )
    if "diffmask" in names and not retrain:
        note += "The retrained DIFFMASK sanity check was skipped (`sanity_retrain: false`).\n"
    elif "diffmask" in names:
        note += (
            "`sanity_spearman` keeps DIFFMASK's trained probe and baseline fixed; "
            "`sanity_spearman_retrained` retrains them from scratch on the randomised model "
            f"(same examples, settings and training; run folder `{SANITY_DIR}/`).\n"
        )
    if not ws.is_main:
        return rows
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
