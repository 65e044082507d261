"""The DIFFMASK analysis run behind ``analyze_diffmask``: train (or load) DIFFMASK, explain the
held-out examples, evaluate, and write the run folder and its report."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from attribution_analysis.app.cli import set_resume_hint
from attribution_analysis.app.comparison import run_comparison
from attribution_analysis.app.workspace import (
    Workspace,
    gold_token_labels,
    open_workspace,
    split_examples,
)
from attribution_analysis.config import AttributionConfig, resolve_path, to_dict
from attribution_analysis.evaluation.attribution_run import AttributionRun
from attribution_analysis.evaluation.compare import display_rows
from attribution_analysis.evaluation.word_statistics import (
    KEEP_THRESHOLD,
    MIN_SUPPORT,
    TOP_WORD_FIELDS,
    top_words_rule,
)
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.checkpoint import check_resumable, training_record
from attribution_analysis.methods.diffmask.train_diffmask import (
    extract_attributions_diffmask,
    load_diffmask_checkpoint,
    train_diffmask,
    validate,
)
from attribution_analysis.methods.registry import parse_method_list
from attribution_analysis.methods.result import AttributionResult
from attribution_analysis.reporting.html_report import write_report
from attribution_analysis.reporting.plots import plot_training_history
from attribution_analysis.utils.devices import check_device, make_accelerator, seed_everything
from attribution_analysis.utils.distributed import same_on_all, wait
from attribution_analysis.utils.io import atomic_write_json, atomic_write_text, timestamped_dir

HISTORY_SHOWN = 5
PER_SAMPLE_FIELDS = ("impression_id", "news_id", "rank", "word", "score")


@dataclass
class AnalysisResult:
    """What a run produced (paths and the summary)."""

    run_dir: Path
    summary: dict
    attributions: AttributionRun | None = None
    comparison: list[dict] | None = None


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def annotate(ws: Workspace, results: list[AttributionResult], split: str) -> AttributionRun:
    """The results as an :class:`AttributionRun`, each annotated with what the report shows:
    the candidate's ``title``, its ``gold_words`` and the user's ``history_titles`` (the most
    recent ``HISTORY_SHOWN``, newest first)."""
    histories = {imp.impression_id: imp.history for imp in ws.data.split(split)}
    for r in results:
        imp_history = histories.get(r.ids.get("impression_id"), ())
        r.annotations = {
            "title": ws.title(r.ids["news_id"]),
            "gold_words": ws.data.rationales.get(r.ids.get("news_id")),
            "history_titles": [ws.title(n) for n in reversed(imp_history[-HISTORY_SHOWN:])],
        }
    return AttributionRun(results)


def gold_labels(result: AttributionResult) -> list[int] | None:
    """0/1 per token of ``result`` from its annotated gold words (None without them)."""
    return gold_token_labels(
        result.words,
        result.word_token_index,
        len(result.tokens),
        result.annotations.get("gold_words"),
    )


def train_for_workspace(
    ws: Workspace, run_dir: Path, quiet: bool = False, diffmask: DIFFMASK | None = None
) -> DIFFMASK:
    """Train a DIFFMASK (a fresh one unless given) on the workspace's example split."""
    train_ex, val_ex, _ = split_examples(ws)
    return train_on_examples(ws, run_dir, train_ex, val_ex, quiet, diffmask)


def train_on_examples(
    ws: Workspace,
    run_dir: Path,
    train_ex: list,
    val_ex: list,
    quiet: bool = False,
    diffmask: DIFFMASK | None = None,
) -> DIFFMASK:
    """Train a DIFFMASK (a fresh one unless given) on the given train and validation examples
    of the workspace's data; the history is written to ``run_dir``."""
    diffmask = diffmask or ws.build_diffmask()
    history = _train(ws, diffmask, run_dir, train_ex, val_ex, quiet)
    if ws.is_main:
        _write_history(history, run_dir)
    return diffmask


def diffmask_loaders(ws: Workspace, train_ex: list, val_ex: list) -> tuple:
    """The loaders DIFFMASK trains (shuffled) and validates on."""
    return ws.loader(train_ex, shuffle=True), ws.loader(val_ex)


def resume_record(ws: Workspace, train_ex: list, val_ex: list) -> dict:
    """What a DIFFMASK run folder must share with a run that resumes it (``check_resumable``
    checks it before anything is written; ``train_diffmask`` records it)."""
    cfg = ws.config
    return training_record(cfg.diffmask.training, cfg.seed, *diffmask_loaders(ws, train_ex, val_ex))


def _train(ws: Workspace, diffmask: DIFFMASK, run_dir: Path, train_ex, val_ex, quiet: bool):
    cfg = ws.config
    train_loader, val_loader = diffmask_loaders(ws, train_ex, val_ex)
    torch.manual_seed(cfg.seed)
    return train_diffmask(
        diffmask,
        train_loader,
        cfg.diffmask.training,
        val_loader=val_loader,
        output_dir=run_dir,
        device=cfg.device,
        mixed_precision=cfg.mixed_precision,
        seed=cfg.seed,
        quiet=quiet,
    )


def _write_history(history, run_dir: Path) -> dict[str, Path]:
    rows = history.epochs
    if not rows:
        return {}
    columns = list(dict.fromkeys(k for r in rows for k in r))
    atomic_write_text(run_dir / "training_history.csv", _csv_text(rows, columns))
    step_cols = list(dict.fromkeys(k for r in history.steps for k in r))
    atomic_write_text(run_dir / "training_steps.csv", _csv_text(history.steps, step_cols))
    return plot_training_history(rows, run_dir / "plots")


def run_analysis(
    config: AttributionConfig,
    checkpoint: str | None = None,
    skip_training: bool = False,
    run_dir: str | Path | None = None,
    quiet: bool = False,
) -> AnalysisResult:
    """The whole analysis; returns the run folder and summary.

    Under ``torchrun`` / ``accelerate launch`` every stage with data to share runs sharded
    (recommender training if needed, news encoding, DIFFMASK training, extraction, the method
    comparison and the retrained sanity check); the main process alone writes and prints, in
    the run folder it named."""
    check_device(config.device)
    methods = ",".join(config.compare_methods) or "diffmask"
    parse_method_list(methods, config.diffmask.gates.mask_layer)  # bad names fail now
    seed_everything(config.seed)
    accelerator = make_accelerator(config.device, config.mixed_precision)
    main = accelerator.is_main_process
    quiet = quiet or not main
    run_dir = Path(run_dir) if run_dir else timestamped_dir(resolve_path(config.output_dir))
    run_dir = Path(same_on_all(str(run_dir), accelerator))
    ws = open_workspace(config, quiet, accelerator)
    train_ex, val_ex, test_ex = split_examples(ws)
    if checkpoint:
        diffmask = load_diffmask_checkpoint(checkpoint, ws.model)
        if not quiet:
            print(f"[diffmask] loaded {checkpoint}")
    else:
        diffmask = ws.build_diffmask()
    if not skip_training:
        record = resume_record(ws, train_ex, val_ex)
        check_resumable(run_dir / "checkpoints", diffmask, record)  # before anything is written
    # the run folder is written only now, once the inputs are known to be valid
    set_resume_hint(f"rerun the same command with --run_dir {run_dir} to resume")
    if main:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    plots: dict[str, Path] = {}
    training = {"trained": False}
    if not skip_training:
        history = _train(ws, diffmask, run_dir, train_ex, val_ex, quiet)
        plots = _write_history(history, run_dir) if main else {}
        training = {
            "trained": True,
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
            "converged": history.converged,
            "convergence": history.convergence,
        }
    device = next(diffmask.parameters()).device
    val = validate(diffmask, ws.loader(val_ex), device)
    results = extract_attributions_diffmask(
        diffmask,
        ws.loader(test_ex),
        config.n_samples,
        device=str(device),
        tokenizer=ws.tokenizer,
        quiet=quiet,
        accelerator=accelerator,
    )
    run = annotate(ws, results, config.split)
    overall = run.top_words(config.top_k)
    if main:
        run.save(run_dir / "attributions.jsonl")
        atomic_write_text(
            run_dir / "top_words_per_sample.csv",
            _csv_text(run.top_words_per_sample(config.top_k), list(PER_SAMPLE_FIELDS)),
        )
        atomic_write_text(run_dir / "top_words.csv", _csv_text(overall, list(TOP_WORD_FIELDS)))
    comparison, comparison_plots, rows = None, None, None
    if any(m != "diffmask" for m in config.compare_methods):
        names = list(dict.fromkeys(["diffmask", *config.compare_methods]))
        rows = run_comparison(ws, names, diffmask, run_dir / "comparison", quiet=quiet)
        comparison = display_rows(rows)
        comparison_plots = {
            f"{k} curves": run_dir / "comparison" / f"{k}_curves.png"
            for k in ("deletion", "insertion")
        }
    summary = {
        "test": run.evaluate(diffmask.margin, gold_labels),
        "validation": val,
        "settings": diffmask.settings,
        "lambda": diffmask.lagrange_multiplier.item(),
        "training": training,
        "checkpoint": checkpoint,
        "run_dir": str(run_dir),
        "comparison": rows,
        "processes": accelerator.num_processes,
    }
    if main:
        _write_outputs(run_dir, config, diffmask, training, summary, run, overall, plots,
                       comparison, comparison_plots)  # fmt: skip
    wait(accelerator)
    return AnalysisResult(run_dir, summary, run, comparison)


def _write_outputs(run_dir, config, diffmask, training, summary, run, overall, plots, comparison,
                   comparison_plots) -> None:  # fmt: skip
    """``summary.json``, ``report.html`` and the printed summary (main process)."""
    atomic_write_json(run_dir / "summary.json", summary)
    write_report(
        run_dir / "report.html",
        title="DIFFMASK word attributions",
        settings={
            **diffmask.settings,
            "n_samples": config.n_samples,
            "seed": config.seed,
            "training": _training_line(training),
        },
        summary=summary["test"],
        samples=run.rows(),
        top_words=overall,
        top_words_rule=top_words_rule(MIN_SUPPORT, KEEP_THRESHOLD),
        training_plots=plots,
        comparison=comparison,
        comparison_plots=comparison_plots,
    )
    _print_summary(run_dir, summary["test"], overall)


def _training_line(training: dict) -> str:
    """How DIFFMASK training ended, in words (shown in the report)."""
    if not training["trained"]:
        return "not trained in this run (checkpoint used as given)"
    conv = training.get("convergence") or {}
    state = {
        "converged": "converged",
        "plateau": "stopped on a validation plateau (no better epoch for "
        f"{conv.get('epochs_without_improvement')} epochs), NOT converged",
    }.get(conv.get("stop_reason"), "stopped at the epoch cap, NOT converged")
    spread = conv.get("lambda_spread")
    detail = (
        ""
        if spread is None
        else (
            f"; lambda spread {spread:.3g} (tolerance {conv['lambda_tolerance']:.3g}), "
            f"validation L0 spread {conv['l0_spread']:.3g} (tolerance {conv['l0_tolerance']:.3g})"
        )
    )
    return f"{state} after {training['epochs']} epochs, best epoch {training['best_epoch']}{detail}"


def _print_summary(run_dir: Path, test: dict, overall: list[dict]) -> None:
    keys = ("within_margin_share", "satisfied_share", "kept_share", "auprc", "token_f1")
    print("[result] " + "  ".join(f"{k}={test[k]:.3f}" for k in keys if k in test))
    print(
        "[result] top words: "
        + (
            ", ".join(f"{r['word']} (kept {r['kept_count']}/{r['count']})" for r in overall)
            or f"none seen at least {MIN_SUPPORT} times"
        )
    )
    print(f"[result] run folder: {run_dir}")
    print(f"[result] report: {run_dir / 'report.html'}")
