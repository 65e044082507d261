"""The run behind ``compare_models``: two recommenders, each with its own DIFFMASK, explain the
same candidates; per word, per group of candidates and per candidate, what changed.

Run folder (``<output_dir>/run_<YYYYmmdd_HHMMSS>/``, or ``run_dir`` to resume)::

    config.yaml                 the resolved comparison config
    model_a/, model_b/          per model: diffmask/ (DIFFMASK run: checkpoints, history;
                                resumed when present) and attributions.jsonl
    words_diff.csv              one row per word (evaluation/model_diff.py WORD_COLUMNS)
    groups_diff.csv             the same within each group of candidates
    candidates.csv              per candidate: click probabilities, rising and falling words
    summary.json                counts, top rising/falling words, known-word ranks
    report.html                 side-by-side heat maps, word and group tables
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from attribution_analysis.app.analysis import (
    _csv_text,
    annotate,
    resume_record,
    train_on_examples,
)
from attribution_analysis.app.cli import set_resume_hint
from attribution_analysis.app.comparison import build_methods
from attribution_analysis.app.workspace import Workspace, open_workspace, split_examples
from attribution_analysis.config import (
    AttributionConfig,
    ConfigError,
    ModelComparisonConfig,
    RecommenderConfig,
    load_config,
    resolve_path,
    to_dict,
)
from attribution_analysis.data.explanation_set import select_examples
from attribution_analysis.data.loading import ensure_synthetic, load_mind_data
from attribution_analysis.data.tokenization import tokenizer_fingerprint
from attribution_analysis.evaluation.attribution_run import AttributionRun
from attribution_analysis.evaluation.model_diff import (
    WORD_COLUMNS,
    candidate_changes,
    group_differences,
    kept_log_odds,
    ranking_auprc,
    word_differences,
)
from attribution_analysis.methods.diffmask.checkpoint import check_resumable
from attribution_analysis.methods.extraction import extract_attributions
from attribution_analysis.methods.registry import parse_method_list
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.reporting.model_comparison_report import write_model_comparison_report
from attribution_analysis.utils.devices import seed_everything
from attribution_analysis.utils.io import atomic_write_json, atomic_write_text, timestamped_dir

MODELS = ("a", "b")
GROUP_COLUMNS = ("group", "n_candidates", "prob_a", "prob_b", *WORD_COLUMNS)
CANDIDATE_COLUMNS = ("impression_id", "user_id", "news_id", "label", "title", "prob_a", "prob_b",
                     "rising", "falling")  # fmt: skip


@dataclass
class ModelComparisonResult:
    run_dir: Path
    summary: dict
    words: list[dict]
    groups: list[dict]


def _workspaces(config: ModelComparisonConfig, quiet: bool) -> dict[str, Workspace]:
    paths = {"a": config.model_a, "b": config.model_b}
    configs = {k: load_config(AttributionConfig, resolve_path(p)) for k, p in paths.items()}
    spaces = {k: open_workspace(configs[k], quiet) for k in MODELS}
    prints = {k: tokenizer_fingerprint(ws.tokenizer) for k, ws in spaces.items()}
    if prints["a"] != prints["b"]:
        raise ConfigError(
            "the two recommenders use different tokenizers, so their words cannot be compared "
            f"({paths['a']}: {spaces['a'].recommender_config.model.encoder}, {paths['b']}: "
            f"{spaces['b'].recommender_config.model.encoder})"
        )
    return spaces


def _data_workspace(config: ModelComparisonConfig, spaces: dict[str, Workspace]) -> Workspace:
    """Whose data gives the candidates: ``candidates_from``'s, or ``candidates_data``'s (a
    recommender config; its data read with the models' shared tokenizer)."""
    if not config.candidates_data:
        return spaces[config.candidates_from]
    rec = load_config(RecommenderConfig, resolve_path(config.candidates_data))
    ensure_synthetic(rec.data)
    a = spaces["a"]
    data = load_mind_data(rec.data, a.tokenizer)
    return Workspace(a.config, rec, a.model, a.tokenizer, data, None)


def _view(ws: Workspace, data_ws: Workspace) -> Workspace:
    """Model ``ws`` on the data of ``data_ws`` (its own news vectors of that data)."""
    if ws.data is data_ws.data:
        return ws
    vectors = encode_news_table(
        ws.model, data_ws.data.table, ws.recommender_config.train.eval_batch_size
    )
    return Workspace(ws.config, ws.recommender_config, ws.model, ws.tokenizer, data_ws.data,
                     vectors)  # fmt: skip


def _prepare(ws: Workspace, view: Workspace, config: ModelComparisonConfig, out: Path) -> tuple:
    """The model's fresh DIFFMASK, the workspace whose examples train it (``view`` with
    ``diffmask_train_data: candidates``) and its training and validation examples, after
    refusing a run folder ``out`` that holds another run (checked for both models before
    anything is written)."""
    diffmask = ws.build_diffmask()
    source = view if config.diffmask_train_data == "candidates" else ws
    train_ex, val_ex = diffmask_examples(source, config)
    record = resume_record(source, train_ex, val_ex)
    check_resumable(out / "diffmask" / "checkpoints", diffmask, record)
    return diffmask, source, train_ex, val_ex


def _explain(view: Workspace, examples, config: ModelComparisonConfig, out: Path, quiet: bool,
             prepared: tuple) -> dict[str, AttributionRun]:  # fmt: skip
    """Train (or resume) the model's DIFFMASK (:func:`_prepare`) and explain ``examples`` with
    it and the other ``config.methods``: ``{method: AttributionRun}``
    (``attributions[_<method>].jsonl``)."""
    diffmask, source, train_ex, val_ex = prepared
    diffmask = train_on_examples(source, out / "diffmask", train_ex, val_ex, quiet, diffmask)
    device = str(next(diffmask.parameters()).device)
    methods = build_methods(view, list(dict.fromkeys(["diffmask", *config.methods])), diffmask,
                            view.config.ig_steps)  # fmt: skip
    runs = {}
    for name, method in methods.items():
        results = extract_attributions(method, view.loader(examples), len(examples), device,
                                       view.tokenizer, quiet=quiet)  # fmt: skip
        runs[name] = annotate(view, results, config.split)
        runs[name].save(out / ("attributions.jsonl" if name == "diffmask"
                               else f"attributions_{name}.jsonl"))  # fmt: skip
    return runs


def diffmask_examples(ws: Workspace, config: ModelComparisonConfig) -> tuple[list, list]:
    """One model's DIFFMASK training and validation examples from ``ws``'s train split: the
    draw of :func:`~attribution_analysis.app.workspace.split_examples`, except that with
    ``include_groups`` a ``group_train_share`` of the training examples are candidates of those
    groups (the first of the same seeded draw); validation stays a random draw of the rest."""
    train_ex, val_ex, _ = split_examples(ws)
    n_train, n_val = len(train_ex), len(val_ex)
    share = config.group_train_share if config.include_groups else 0.0
    if share == 0:
        return train_ex, val_ex
    pool = select_examples(ws.data.train, None, seed=ws.config.seed)
    news, wanted = ws.data.news, set(config.include_groups)
    group = [e for e in pool if getattr(news[e.news_id], config.group_by) in wanted]
    group = group[: round(share * n_train)]
    chosen = {id(e) for e in group}
    rest = [e for e in pool if id(e) not in chosen]
    n_rest = n_train - len(group)
    return group + rest[:n_rest], rest[n_rest : n_rest + n_val]


def _candidates(config: ModelComparisonConfig, data_ws: Workspace) -> list:
    """``n_samples`` candidates drawn from the split, then every other candidate of the
    ``include_groups`` (in the order of the same seeded draw)."""
    pool = select_examples(data_ws.data.split(config.split), None, seed=config.seed + 1)
    chosen = pool[: config.n_samples]
    if config.include_groups:
        if not config.group_by:
            raise ConfigError("include_groups needs group_by (the news.tsv column of groups)")
        news, wanted = data_ws.data.news, set(config.include_groups)
        chosen += [
            e for e in pool[config.n_samples :]
            if getattr(news[e.news_id], config.group_by) in wanted
        ]  # fmt: skip
    return chosen


def known_words(config: ModelComparisonConfig, data_ws: Workspace) -> list[str]:
    """``config.known_words``, else the trigger words of a poisoned synthetic corpus."""
    if config.known_words:
        return [w.lower() for w in config.known_words]
    meta = resolve_path(data_ws.recommender_config.data.train_dir).parent / "meta.json"
    if meta.is_file():
        poison = json.loads(meta.read_text(encoding="utf-8")).get("poison") or {}
        return list(poison.get("trigger_words", []))
    return []


def _known_summary(words: list[dict], known: list[str], rank_by: str) -> dict | None:
    if not known:
        return None
    ranks = {r["word"]: i + 1 for i, r in enumerate(words)}
    present = [w for w in known if w in ranks]
    return {
        "words": known,
        "rank_by_rise": {w: ranks.get(w) for w in known},
        "all_in_top_10": bool(present) and all(ranks[w] <= 10 for w in present),
        "significant": {
            w: next(r["significant"] for r in words if r["word"] == w) for w in present
        },
        "ranked_by": rank_by,
        "auprc": ranking_auprc(words, set(known), rank_by) if present else math.nan,
    }


def _attribution_file(run_dir: Path, model: str, method: str) -> Path:
    name = "attributions.jsonl" if method == "diffmask" else f"attributions_{method}.jsonl"
    return run_dir / f"model_{model}" / name


def _saved_explanations(config: ModelComparisonConfig, run_dir: Path | None) -> dict:
    """``{model: {method: AttributionRun}}`` read from a run folder (``--reuse_explanations``);
    every file of every model and method must be there."""
    if run_dir is None:
        raise ConfigError("reusing explanations needs the run folder that holds them (--run_dir)")
    methods = list(dict.fromkeys(["diffmask", *config.methods]))
    missing = [str(p) for k in MODELS for m in methods
               if not (p := _attribution_file(run_dir, k, m)).is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(f"no saved explanations to reuse: {', '.join(missing)}")
    return {k: {m: AttributionRun.load(_attribution_file(run_dir, k, m)) for m in methods}
            for k in MODELS}  # fmt: skip


def _check_same_candidates(examples: list, saved: dict, run_dir: Path) -> None:
    want = sorted((e.impression.impression_id, e.news_id) for e in examples)
    for k in MODELS:
        for method, run in saved[k].items():
            got = sorted((r.ids.get("impression_id"), r.ids.get("news_id")) for r in run.results)
            if got != want:
                raise ConfigError(
                    f"{_attribution_file(run_dir, k, method)}: explains other candidates than "
                    "this config draws; rerun without --reuse_explanations"
                )


def run_model_comparison(
    config: ModelComparisonConfig,
    run_dir: str | Path | None = None,
    quiet: bool = False,
    reuse_explanations: bool = False,
) -> ModelComparisonResult:
    """Explain the same candidates with both models and write the comparison (module doc).

    ``reuse_explanations``: read the explanations already in ``run_dir`` instead of training
    and explaining (to recompute the statistics with other ``fdr``, ``min_effect``,
    ``rank_by``, ...); they must come from the same models and candidates.
    """
    seed_everything(config.seed)
    parse_method_list(",".join(config.methods) or "diffmask")  # unknown names fail now
    saved = None
    if reuse_explanations:
        saved = _saved_explanations(config, Path(run_dir) if run_dir else None)
    spaces = _workspaces(config, quiet)
    for ws in spaces.values():  # a method a model's DIFFMASK cannot serve fails before training
        parse_method_list(
            ",".join(config.methods) or "diffmask", ws.config.diffmask.gates.mask_layer
        )
    run_dir = Path(run_dir) if run_dir else timestamped_dir(resolve_path(config.output_dir))
    data_ws = _data_workspace(config, spaces)
    examples = _candidates(config, data_ws)
    if saved is not None:
        _check_same_candidates(examples, saved, run_dir)
    else:  # both run folders checked before anything is written
        views = {k: _view(spaces[k], data_ws) for k in MODELS}
        prepared = {k: _prepare(spaces[k], views[k], config, run_dir / f"model_{k}")
                    for k in MODELS}  # fmt: skip
    set_resume_hint(f"rerun the same command with --run_dir {run_dir} to resume")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    runs = saved if saved is not None else {}
    if saved is None:
        for k in MODELS:
            if not quiet:
                print(f"[compare] model {k.upper()}: DIFFMASK and {len(examples)} explanations")
            runs[k] = _explain(views[k], examples, config, run_dir / f"model_{k}", quiet,
                               prepared[k])  # fmt: skip
    known = known_words(config, data_ws)
    per_method = {}
    for name in runs["a"]:
        a, b = runs["a"][name].results, runs["b"][name].results
        words, groups = _differences(config, data_ws, a, b, name)
        per_method[name] = (words, groups)
        if name != "diffmask":
            suffix = f"_{name}.csv"
            atomic_write_text(run_dir / f"words_diff{suffix}", _csv_text(words, list(WORD_COLUMNS)))
            atomic_write_text(run_dir / f"groups_diff{suffix}",
                              _csv_text(groups, list(GROUP_COLUMNS)))  # fmt: skip
    words, groups = per_method["diffmask"]
    a, b = runs["a"]["diffmask"].results, runs["b"]["diffmask"].results
    candidates = candidate_changes(a, b)
    for row, res in zip(candidates, a):
        row["title"] = res.annotations.get("title")
    summary = _summary(config, words, groups, candidates, known, run_dir)
    summary["other_methods"] = {
        name: _ranking(w, g, known, config)
        for name, (w, g) in per_method.items()
        if name != "diffmask"
    }
    _write(run_dir, words, groups, candidates, summary,
           {k: runs[k]["diffmask"] for k in MODELS}, config)  # fmt: skip
    return ModelComparisonResult(run_dir, summary, words, groups)


def _differences(config, data_ws, a, b, method: str) -> tuple[list[dict], list[dict]]:
    """Word and group differences between the runs ``a`` and ``b`` of one method (DIFFMASK's
    keep probabilities weighted as ``config.diffmask_statistic`` says)."""
    weighted = method == "diffmask" and config.diffmask_statistic == "kept_log_odds"
    stats = {
        "weight": kept_log_odds if weighted else None,
        "min_support": config.min_support,
        "keep_threshold": config.keep_threshold,
        "fdr": config.fdr,
        "n_boot": config.n_boot,
        "n_perm": config.n_perm,
        "seed": config.seed,
        "min_effect": config.min_effect,
        "min_diff": config.min_diff,
        "rank_by": config.rank_by,
    }
    words = word_differences(a, b, **stats)
    groups = []
    if config.group_by:
        news = data_ws.data.news
        groups = group_differences(
            a, b, lambda r: getattr(news[r.ids["news_id"]], config.group_by), **stats
        )
    return words, groups


def _group_known(groups: list[dict], known: list[str]) -> dict:
    """Per group: each known word's rank by rise within the group and its significance."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(g["group"] for g in groups):
        rows = [g for g in groups if g["group"] == name]
        ranks = {r["word"]: (i + 1, r["significant"]) for i, r in enumerate(rows)}
        found = {w: ranks[w] for w in known if w in ranks}
        if found:
            out[name] = {w: {"rank": rank, "significant": sig} for w, (rank, sig) in found.items()}
    return out


def _ranking(
    words: list[dict], groups: list[dict], known: list[str], config: ModelComparisonConfig
) -> dict:
    """What one method's word differences say: significant rises and falls, the top words,
    and the known words' ranks overall and per group."""
    return {
        "n_words_tested": len(words),
        "n_significant_rising": sum(r["significant"] and r["diff"] > 0 for r in words),
        "n_significant_falling": sum(r["significant"] and r["diff"] < 0 for r in words),
        "top_rising": [r["word"] for r in words[: config.top_k] if r["diff"] > 0],
        "top_falling": [r["word"] for r in reversed(words[-config.top_k :]) if r["diff"] < 0],
        "known_words": _known_summary(words, known, config.rank_by),
        "known_words_in_groups": _group_known(groups, known),
    }


def _summary(config, words, groups, candidates, known, run_dir) -> dict:
    probs = {k: [c[f"prob_{k}"] for c in candidates if c[f"prob_{k}"] is not None] for k in MODELS}
    return {
        "model_a": config.model_a,
        "model_b": config.model_b,
        "n_candidates": len(candidates),
        "mean_prob_a": sum(probs["a"]) / max(len(probs["a"]), 1),
        "mean_prob_b": sum(probs["b"]) / max(len(probs["b"]), 1),
        **_ranking(words, groups, known, config),
        "groups": sorted({g["group"] for g in groups}),
        "fdr": config.fdr,
        "min_effect": config.min_effect,
        "min_diff": config.min_diff,
        "rank_by": config.rank_by,
        "diffmask_statistic": config.diffmask_statistic,
        "run_dir": str(run_dir),
    }


def _write(run_dir, words, groups, candidates, summary, runs, config) -> None:
    atomic_write_text(run_dir / "words_diff.csv", _csv_text(words, list(WORD_COLUMNS)))
    atomic_write_text(run_dir / "groups_diff.csv", _csv_text(groups, list(GROUP_COLUMNS)))
    flat = [{**c, "rising": "; ".join(c["rising"]), "falling": "; ".join(c["falling"])}
            for c in candidates]  # fmt: skip
    atomic_write_text(run_dir / "candidates.csv", _csv_text(flat, list(CANDIDATE_COLUMNS)))
    atomic_write_json(run_dir / "summary.json", summary)
    source = config.candidates_data or f"model {config.candidates_from.upper()}'s data"
    source = f"{source}, {config.split} split"
    write_model_comparison_report(
        run_dir / "report.html",
        settings={"model A": config.model_a, "model B": config.model_b,
                  "candidates": f"{summary['n_candidates']} from {source}",
                  "min support": config.min_support, "FDR": config.fdr,
                  "min effect (robust z)": config.min_effect,
                  "min change (statistic's units)": config.min_diff, "ranked by": config.rank_by,
                  "DIFFMASK statistic": config.diffmask_statistic},
        summary=summary,
        words=words,
        groups=groups,
        samples_a=runs["a"].rows(),
        samples_b=runs["b"].rows(),
        top_k=config.top_k,
    )  # fmt: skip


__all__ = ["ModelComparisonResult", "known_words", "run_model_comparison"]
