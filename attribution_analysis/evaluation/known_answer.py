"""Known-answer benchmark: explain a classifier whose decisive input positions are known.

A small ``transformers`` BERT classifier is trained on the key-count task
(:mod:`attribution_analysis.data.known_answer`), then explained through the library's
``transformers`` adapter by DIFFMASK (library defaults, one run per seed) and by the baselines.
Every method is scored on held-out examples that have at least one key by

* the Jensen-Shannon divergence (base 2) between its attribution mass and the uniform
  distribution over the key positions (:func:`~attribution_analysis.evaluation.plausibility.
  rationale_js_divergence`; [0, 1], lower is better), and
* AUPRC of its scores against the key positions ([0, 1], higher is better).

``uniform`` (the same score for every token) is the floor a method must beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from attribution_analysis.data.known_answer import MASK, PAD, SPECIAL_IDS, KeyCountTask
from attribution_analysis.evaluation.plausibility import auprc, rationale_js_divergence
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.train_diffmask import train_diffmask, validate
from attribution_analysis.methods.registry import build_method
from attribution_analysis.models.sequence_classifier import (
    accuracy,
    small_bert_classifier,
    train_sequence_classifier,
)

BASELINES = ("ig", "saliency", "leave_one_out", "random", "uniform")


@dataclass(frozen=True)
class KnownAnswerSetup:
    """Sizes of one benchmark run (the defaults are the benchmark's; tests use smaller ones)."""

    task: KeyCountTask = field(default_factory=KeyCountTask)
    n_classifier_train: int = 8000
    classifier_epochs: int = 4
    n_diffmask_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    batch_size: int = 64
    ig_steps: int = 50
    classifier_seed: int = 0


def train_classifier(setup: KnownAnswerSetup):
    """The explained model and its held-out accuracy (seeded by ``classifier_seed``)."""
    task = setup.task
    model = small_bert_classifier(
        task.vocab_size, task.max_tokens, num_labels=task.num_labels, seed=setup.classifier_seed
    )
    train = task.generate(setup.n_classifier_train, seed=setup.classifier_seed)
    train_sequence_classifier(
        model, train, epochs=setup.classifier_epochs, seed=setup.classifier_seed
    )
    test = task.generate(setup.n_test, seed=setup.classifier_seed + 3)
    return model, accuracy(model, test)


def _scores_of(scores: torch.Tensor, data, scorable: torch.Tensor) -> dict[str, float]:
    """Mean JS and AUPRC over examples with at least one key. ``scores [n, tokens]``."""
    js, ap = [], []
    for i in range(len(data)):
        keep = scorable[i]
        gold = data.rationale[i][keep].numpy()
        if gold.sum() == 0:
            continue
        s = scores[i][keep].double().numpy()
        js.append(rationale_js_divergence(gold, s))
        ap.append(auprc(gold, s))
    return {"js": float(np.mean(js)), "auprc": float(np.mean(ap)), "n_examples": len(js)}


def _attribute(method, data, batch_size: int) -> tuple[torch.Tensor, float]:
    """Scores ``[n, tokens]`` of a baseline method and its seconds per example."""
    adapter = method.adapter
    out, t0 = [], time.perf_counter()
    for start in range(0, len(data), batch_size):
        ids = data.input_ids[start : start + batch_size]
        mask = data.attention_mask[start : start + batch_size]
        ctx = adapter.with_decision(ids, mask, {})
        out.append(method.attribute(ids, mask, ctx).detach().float())
    return torch.cat(out), (time.perf_counter() - t0) / len(data)


def baseline_scores(
    model, setup: KnownAnswerSetup, test, seed: int, names: tuple[str, ...] = BASELINES
) -> dict[str, dict]:
    """JS, AUPRC and seconds per example of the named baselines on ``test``."""
    common = {"special_token_ids": SPECIAL_IDS, "pad_token_id": PAD, "mask_token_id": MASK}
    common["seed"] = seed
    options = {"ig": {"n_steps": setup.ig_steps}}
    scorable = build_method("random", model, **common).scorable(test.input_ids, test.attention_mask)
    results = {}
    for name in names:
        if name == "uniform":
            scores, seconds = scorable.float(), 0.0
        else:
            method = build_method(name, model, **common, **options.get(name, {}))
            scores, seconds = _attribute(method, test, setup.batch_size)
        results[name] = {**_scores_of(scores, test, scorable), "seconds_per_example": seconds}
    return results


def diffmask_scores(model, setup: KnownAnswerSetup, seed: int, test) -> dict:
    """Train DIFFMASK with the library defaults (seed ``seed``) and score it on ``test``."""
    task = setup.task
    torch.manual_seed(seed)
    diffmask = DIFFMASK(model, special_token_ids=SPECIAL_IDS, mask_token_id=MASK, pad_token_id=PAD)
    train = task.generate(setup.n_diffmask_train, seed=1000 + seed)
    val = task.generate(setup.n_val, seed=2000)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    history = train_diffmask(
        diffmask,
        DataLoader(train, batch_size=setup.batch_size, shuffle=True, generator=gen),
        val_loader=DataLoader(val, batch_size=setup.batch_size),
        save_checkpoints=False,
        quiet=True,
        seed=seed,
    )
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = diffmask.get_attributions(test.input_ids, test.attention_mask)
    seconds = (time.perf_counter() - t0) / len(test)
    scorable = diffmask.scorable_mask(test.input_ids, test.attention_mask)
    held_out = validate(diffmask, DataLoader(test, batch_size=setup.batch_size), "cpu")
    distinct = len(torch.unique(scores[scorable].round(decimals=4)))
    return {
        **_scores_of(scores, test, scorable),
        "seconds_per_example": seconds,
        "train_seconds": train_seconds,
        "epochs": len(history.epochs),
        "converged": history.converged,
        "stop_reason": (history.convergence or {}).get("stop_reason"),
        "within_margin": held_out["within_margin"],
        "kept_share": held_out["l0"],
        "distinct_scores": distinct,
    }


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def run_known_answer(setup: KnownAnswerSetup, seeds: list[int]) -> dict:
    """The whole benchmark: classifier, baselines (per seed for ``random``), DIFFMASK per seed.

    Returns ``classifier_accuracy``, ``per_seed`` (method -> list of metric dicts, one per
    seed) and ``summary`` (method -> metric -> ``(mean, sd)``, sd over seeds, 0 for one seed).
    """
    with torch.random.fork_rng():
        model, acc = train_classifier(setup)
        test = setup.task.generate(setup.n_test, seed=setup.classifier_seed + 5)
        per_seed: dict[str, list[dict]] = {}
        fixed = baseline_scores(model, setup, test, seed=seeds[0])
        for seed in seeds:
            # only the random baseline depends on the seed
            rows = {**fixed, **baseline_scores(model, setup, test, seed, names=("random",))}
            for name in BASELINES:
                per_seed.setdefault(name, []).append(rows[name])
            per_seed.setdefault("diffmask", []).append(diffmask_scores(model, setup, seed, test))
    summary = {
        name: {key: mean_sd([r[key] for r in rows]) for key in rows[0] if _numeric(rows[0][key])}
        for name, rows in per_seed.items()
    }
    return {"classifier_accuracy": acc, "seeds": seeds, "per_seed": per_seed, "summary": summary}


__all__ = [
    "BASELINES",
    "KnownAnswerSetup",
    "baseline_scores",
    "diffmask_scores",
    "mean_sd",
    "run_known_answer",
    "train_classifier",
]
