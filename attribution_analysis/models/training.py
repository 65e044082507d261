"""Train NRMS with ``accelerate``: softmax cross-entropy over 1 click + K negatives, a checkpoint
each epoch (atomic), resume from the last one, and the best model on dev AUC saved apart.

Under ``accelerate launch`` (or ``torchrun``) with N processes the training batches are split
across the processes (``batch_size`` stays the global batch), the forward runs through the
wrapped :class:`~.click_scorer.ClickScorer` so gradients are averaged, dev scoring is sharded,
and only the main process writes files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attribution_analysis.config import RecommenderConfig, resolve_path, to_dict
from attribution_analysis.data.datasets import ClickSamples, collate_clicks
from attribution_analysis.data.loading import MindData, ensure_synthetic, load_mind_data
from attribution_analysis.data.mind import DataError
from attribution_analysis.models.click_scorer import ClickScorer, batch_logits
from attribution_analysis.models.history_cache import HistoryVectorCache
from attribution_analysis.models.inference import encode_news_table, score_impressions
from attribution_analysis.models.lower_cache import build_lower_cache
from attribution_analysis.models.nrms import NRMS
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.ranking_metrics import mind_metrics, write_predictions
from attribution_analysis.models.serialization import build_nrms, load_recommender, save_recommender
from attribution_analysis.utils.devices import make_accelerator, seed_everything
from attribution_analysis.utils.distributed import gather_interleaved, interleaved_shard
from attribution_analysis.utils.io import (
    UnreadableFileError,
    atomic_torch_save,
    atomic_write_json,
    load_torch_file,
)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    best_dir: Path
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    news_vectors: torch.Tensor | None = None
    """``[table rows, dim]``: every news vector of the token table under the best model, from
    its dev evaluation (on the training device, what :func:`~.inference.encode_news_table`
    gives there for ``best_dir``'s model, bit for bit); ``None`` when the best epoch came
    before a resume."""


def write_dev_results(
    config: RecommenderConfig, data: MindData, result: TrainResult, accelerator=None
) -> dict:
    """A training run's last step, whoever started it: reload the best model from
    ``result.best_dir``, score the dev split (with ``result.news_vectors``, the best epoch's,
    when the run has them) and write ``prediction.txt`` (MIND's ``impid [rank,...]``) and
    ``metrics.json`` into ``result.run_dir`` (the main process only). Returns the summary
    written: ``dev`` metrics, ``train_seconds``, ``best_epoch``, ``data`` statistics,
    ``processes``."""
    tc = config.train
    accelerator = accelerator or make_accelerator(tc.device, tc.mixed_precision)
    model = load_recommender(result.best_dir, config.model).to(accelerator.device)
    metrics, scores = evaluate_split(
        model, data, "dev", config, accelerator=accelerator, news_vectors=result.news_vectors
    )
    summary = {
        "dev": metrics,
        "train_seconds": result.seconds,
        "best_epoch": result.best_metrics.get("epoch"),
        "data": data.stats.summary(),
        "processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        ids = [imp.impression_id for imp in data.dev]
        write_predictions(result.run_dir / "prediction.txt", ids, scores)
        atomic_write_json(result.run_dir / "metrics.json", summary)
    return summary


def _optimizer(model: NRMS, config: RecommenderConfig) -> torch.optim.Optimizer:
    plm_params = [p for p in model.news_encoder.plm.parameters() if p.requires_grad]
    plm_ids = {id(p) for p in plm_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in plm_ids]
    groups = [{"params": rest, "lr": config.train.lr}]
    if plm_params:
        groups.append({"params": plm_params, "lr": config.train.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=config.train.weight_decay)


def _warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / steps) if steps > 0 else 1.0
    )


def evaluate_split(
    model: NRMS,
    data: MindData,
    split: str,
    config: RecommenderConfig,
    limit: int | None = None,
    accelerator=None,
    quiet: bool = True,
    news_vectors: torch.Tensor | None = None,
) -> tuple[dict, list]:
    """MIND metrics of ``split`` (news encoded once, or ``news_vectors [table rows, dim]`` of
    ``model`` when given) and the per-impression scores.

    With several processes (``accelerator``) the news table and the impressions are sharded
    and the scores gathered in impression order on every process."""
    impressions = data.split(split)[:limit] if limit else data.split(split)
    if not impressions:
        raise DataError(f"the {split} split has no impression: nothing to evaluate on")
    scores = score_impressions(
        model,
        interleaved_shard(impressions, accelerator),
        data.table,
        config.data.max_history,
        config.train.eval_batch_size,
        news_vectors=news_vectors,
        quiet=quiet,
        accelerator=accelerator,
    )
    scores = gather_interleaved(scores, len(impressions), accelerator)
    labelled = [(imp.labels, s) for imp, s in zip(impressions, scores) if imp.labels is not None]
    return mind_metrics(labelled), scores  # unlabelled: NaN metrics (written as null)


def _latest_checkpoint(ckpt_dir: Path, main: bool = True) -> tuple[Path, dict] | None:
    """The newest readable ``epoch_<N>.pt`` and its contents; an unreadable one (e.g. truncated
    by a crash) is reported and the previous epoch is used instead."""
    found = sorted(ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for path in reversed(found):
        try:
            state = load_torch_file(path, "recommender training checkpoint")
        except UnreadableFileError as exc:
            if main:
                print(f"[train] WARNING: {exc}; trying the previous epoch")
            continue
        if not isinstance(state, dict) or not {"model", "epoch"} <= state.keys():
            raise ValueError(f"{path}: not a recommender training checkpoint")
        return path, state
    return None


def _check_splits(config: RecommenderConfig, data: MindData, samples: ClickSamples) -> None:
    """Refuse, before anything is written, a train split without a click or an empty dev
    split (metrics would be ``NaN``), naming the file."""
    if len(samples) == 0:
        raise DataError(
            f"{resolve_path(config.data.train_dir) / 'behaviors.tsv'}: no clicked candidate "
            f"({len(data.train)} impressions): nothing to train the recommender on"
        )
    if not data.dev:
        raise DataError(
            f"{resolve_path(config.data.dev_dir) / 'behaviors.tsv'}: no impression: nothing to "
            "evaluate the recommender on"
        )


def train_recommender(
    config: RecommenderConfig,
    data: MindData | None = None,
    run_dir: str | Path | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train NRMS as ``config`` says; resumes if ``run_dir`` holds epoch checkpoints."""
    t0 = time.perf_counter()
    tc = config.train
    seed_everything(tc.seed)
    accelerator = make_accelerator(tc.device, tc.mixed_precision)
    main = accelerator.is_main_process
    quiet = quiet or not accelerator.is_local_main_process
    tokenizer = load_tokenizer(config.model)
    if data is None:
        if main:
            ensure_synthetic(config.data)
        accelerator.wait_for_everyone()
        data = load_mind_data(config.data, tokenizer)
    try:
        samples = ClickSamples(
            data.train, data.table, config.data.npratio, config.data.max_history, tc.seed
        )
    except ValueError as exc:  # an unlabelled train impression
        raise DataError(f"{resolve_path(config.data.train_dir) / 'behaviors.tsv'}: {exc}") from None
    _check_splits(config, data, samples)
    run_dir = Path(run_dir) if run_dir else resolve_path(tc.output_dir) / (tc.run_name or "default")
    ckpt_dir, best_dir = run_dir / "checkpoints", run_dir / "best"
    if main:
        atomic_write_json(run_dir / "config.json", to_dict(config))

    model = build_nrms(config.model, len(tokenizer)).to(accelerator.device)
    optimizer = _optimizer(model, config)
    scheduler = _warmup(optimizer, tc.warmup_steps)
    cache = (
        HistoryVectorCache(len(data.table), tc.history_cache_steps)
        if tc.history_cache_steps
        else None
    )
    scorer, optimizer = accelerator.prepare(
        ClickScorer(model, tc.history_plm_grad, cache), optimizer
    )

    start_epoch, best, history = 0, {"auc": -math.inf}, []
    best_vectors = None
    found = _latest_checkpoint(ckpt_dir, main)
    if found is not None:
        latest, state = found
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        if main:
            print(f"[train] resumed from {latest} (epoch {state['epoch'] + 1} done)")

    lower_path = run_dir / "lower_cache.npy"
    lower_cache = None
    if model.news_encoder.caches_lower_layers and start_epoch < tc.epochs:
        lower_cache = build_lower_cache(
            model, data.table, tc.eval_batch_size, tc.lower_cache, lower_path, accelerator, quiet
        )
    for epoch in range(start_epoch, tc.epochs):
        torch.manual_seed(tc.seed * 1000 + epoch)  # dropout depends on the epoch only: resumable
        samples.set_epoch(epoch)
        loader = accelerator.prepare_data_loader(
            DataLoader(
                samples,
                batch_size=tc.batch_size,
                shuffle=True,
                collate_fn=collate_clicks,
                generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch),
            )
        )
        if cache is not None:
            cache.clear()  # an epoch never reuses the previous one's vectors: exact resumes
        losses = _train_epoch(scorer, loader, data, lower_cache, optimizer, scheduler, accelerator,
                              config, epoch, quiet, cache)  # fmt: skip
        vectors = encode_news_table(model, data.table, tc.eval_batch_size, quiet, accelerator)
        metrics, _ = evaluate_split(
            model, data, "dev", config, tc.max_dev_impressions, accelerator, quiet, vectors
        )
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1), **metrics}
        history.append(row)
        if not quiet:
            print(
                "[train] "
                + "  ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
        # Unlabelled dev (NaN AUC): the latest epoch counts as the best.
        improved = math.isnan(metrics["auc"]) or metrics["auc"] > best["auc"]
        if improved:
            best, best_vectors = {**metrics, "epoch": epoch + 1}, vectors
        if main:
            if improved:
                save_recommender(
                    model, best_dir, config.model, len(tokenizer), {"dev_metrics": best}
                )
            atomic_torch_save(
                ckpt_dir / f"epoch_{epoch + 1}.pt",
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "history": history,
                },
            )
        accelerator.wait_for_everyone()
    if main:
        atomic_write_json(run_dir / "history.json", history)
        lower_path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    return TrainResult(run_dir, best_dir, best, history, seconds, best_vectors)


def _train_epoch(
    scorer, loader, data, lower_cache, optimizer, scheduler, accelerator, config, epoch, quiet,
    cache: HistoryVectorCache | None = None,
) -> list[float]:  # fmt: skip
    """One epoch (at most ``max_steps_per_epoch`` steps) through the wrapped ``scorer``; the
    losses, averaged over the processes."""
    tc = config.train
    n_steps = min(len(loader), tc.max_steps_per_epoch or len(loader))
    scorer.train()
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=quiet)
    losses: list[float] = []
    for step, batch in enumerate(loader):
        if step >= n_steps:
            break
        with accelerator.autocast():
            logits = scorer(batch, data.table, lower_cache)
            loss = F.cross_entropy(logits.float(), batch["target"].to(logits.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(scorer.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        if cache is not None:
            cache.advance()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    return losses


__all__ = [
    "ClickScorer",
    "TrainResult",
    "batch_logits",
    "build_lower_cache",
    "evaluate_split",
    "train_recommender",
]
