"""Train NRMS with ``accelerate``: softmax cross-entropy over 1 click + K negatives, a checkpoint
each epoch (atomic), resume from the last one, and the best model on dev AUC saved apart."""

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
from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.models.inference import score_impressions
from attribution_analysis.models.nrms import NRMS
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.ranking_metrics import mind_metrics
from attribution_analysis.models.serialization import build_nrms, save_recommender
from attribution_analysis.utils.devices import make_accelerator, seed_everything
from attribution_analysis.utils.io import atomic_torch_save, atomic_write_json, load_torch_file
from attribution_analysis.utils.modes import eval_mode


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    best_dir: Path
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def build_lower_cache(model: NRMS, table: TokenTable, batch_size: int = 256) -> torch.Tensor:
    """Frozen-bottom states of every news item: ``[num_rows, tokens, hidden]``."""
    encoder = model.news_encoder
    device = next(model.parameters()).device
    length = int(table.attention_mask.sum(-1).max())
    chunks = []
    with eval_mode(encoder):
        for start in range(0, len(table), batch_size):
            ids = table.input_ids[start : start + batch_size, :length].to(device)
            mask = table.attention_mask[start : start + batch_size, :length].to(device)
            chunks.append(encoder.lower_states(ids, mask))
    return torch.cat(chunks)


def batch_logits(
    model: NRMS,
    batch: dict[str, torch.Tensor],
    table: TokenTable,
    lower_cache: torch.Tensor | None,
) -> torch.Tensor:
    """Scores ``[batch, 1 + K]``; each distinct news item of the batch is encoded once."""
    device = next(model.parameters()).device
    cand, hist = batch["candidates"], batch["history"]
    rows = torch.cat([cand.flatten(), hist.flatten()])
    unique, inverse = torch.unique(rows, return_inverse=True)
    ids, mask = table.rows(unique)
    ids, mask = ids.to(device), mask.to(device)
    if lower_cache is not None:
        lower = lower_cache[unique.to(lower_cache.device)][:, : ids.shape[1]].to(device)
        vectors = model.news_encoder.forward_from_lower(lower, mask)
    else:
        vectors = model.news_encoder(ids, mask).vectors
    inverse = inverse.to(device)
    cand_vec = vectors[inverse[: cand.numel()]].view(*cand.shape, -1)
    hist_vec = vectors[inverse[cand.numel() :]].view(*hist.shape, -1)
    user = model.user_vector(hist_vec, batch["history_mask"].to(device))
    return model.score(user, cand_vec)


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
    model: NRMS, data: MindData, split: str, config: RecommenderConfig, limit: int | None = None
) -> tuple[dict, list]:
    """MIND metrics of ``split`` (news encoded once) and the per-impression scores."""
    impressions = data.split(split)[:limit] if limit else data.split(split)
    scores = score_impressions(
        model, impressions, data.table, config.data.max_history, config.train.eval_batch_size
    )
    if not impressions:
        raise DataError(f"the {split} split has no impression: nothing to evaluate on")
    labelled = [(imp.labels, s) for imp, s in zip(impressions, scores) if imp.labels is not None]
    return mind_metrics(labelled), scores  # unlabelled: NaN metrics (written as null)


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


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
    tokenizer = load_tokenizer(config.model)
    if data is None:
        ensure_synthetic(config.data)
        data = load_mind_data(config.data, tokenizer)
    run_dir = Path(run_dir) if run_dir else resolve_path(tc.output_dir) / (tc.run_name or "default")
    ckpt_dir, best_dir = run_dir / "checkpoints", run_dir / "best"
    atomic_write_json(run_dir / "config.json", to_dict(config))

    model = build_nrms(config.model, len(tokenizer)).to(accelerator.device)
    optimizer = _optimizer(model, config)
    scheduler = _warmup(optimizer, tc.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    start_epoch, best, history = 0, {"auc": -math.inf}, []
    latest = _latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = load_torch_file(latest, "recommender training checkpoint")
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        print(f"[train] resumed from {latest} (epoch {state['epoch'] + 1} done)")

    lower_cache = (
        build_lower_cache(raw, data.table) if raw.news_encoder.caches_lower_layers else None
    )
    samples = ClickSamples(
        data.train, data.table, config.data.npratio, config.data.max_history, tc.seed
    )
    if len(samples) == 0:
        raise DataError(
            f"{resolve_path(config.data.train_dir) / 'behaviors.tsv'}: no clicked candidate "
            f"({len(data.train)} impressions): nothing to train the recommender on"
        )
    for epoch in range(start_epoch, tc.epochs):
        torch.manual_seed(tc.seed * 1000 + epoch)  # dropout depends on the epoch only: resumable
        samples.set_epoch(epoch)
        loader = DataLoader(
            samples,
            batch_size=tc.batch_size,
            shuffle=True,
            collate_fn=collate_clicks,
            generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch),
        )
        n_steps = min(len(loader), tc.max_steps_per_epoch or len(loader))
        model.train()
        bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=quiet)
        losses = []
        for step, batch in enumerate(loader):
            if step >= n_steps:
                break
            with accelerator.autocast():
                logits = batch_logits(raw, batch, data.table, lower_cache)
                loss = F.cross_entropy(logits.float(), batch["target"].to(logits.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        bar.close()
        metrics, _ = evaluate_split(raw, data, "dev", config, tc.max_dev_impressions)
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
        if math.isnan(metrics["auc"]) or metrics["auc"] > best["auc"]:
            best = {**metrics, "epoch": epoch + 1}
            save_recommender(raw, best_dir, config.model, len(tokenizer), {"dev_metrics": best})
        atomic_torch_save(
            ckpt_dir / f"epoch_{epoch + 1}.pt",
            {
                "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best": best,
                "history": history,
            },
        )
    atomic_write_json(run_dir / "history.json", history)
    return TrainResult(run_dir, best_dir, best, history, time.perf_counter() - t0)
