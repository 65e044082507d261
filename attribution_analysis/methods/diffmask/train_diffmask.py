"""Train DIFFMASK (Lagrangian: min over probe and baseline, max over lambda >= 0), save
checkpoints, load them back, and extract attributions.

``train_diffmask`` minimises ``DIFFMASK.lagrangian`` (sparsity term + lambda * constraint term +
logit decay; see there) with Adam for the probe (``lr_probe``) and the baseline
(``lr_baseline``) and ascends lambda with Adam on ``DIFFMASK.dual_signal`` (``lr_lambda``),
lambda clamped to ``[0, lambda_max]`` after every step. Training stops when the convergence
rule holds (:mod:`.convergence`) or at the ``n_epochs`` cap. The explained model is
frozen (no gradient reaches its weights) and in eval mode (dropout off). A checkpoint is written
atomically every epoch to ``<output_dir>/checkpoints/diffmask_epoch_<N>.pt``; the sparsest
epoch whose validation share of examples within the margin reaches ``target_within_margin``
(the share that also keeps the same decision is reported beside it) is copied to
``checkpoints/best.pt`` and loaded at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from attribution_analysis.methods.diffmask.convergence import (
    ConvergenceRule,
    ConvergenceStatus,
    check_convergence,
)
from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.explained_model import ExplainedModel, make_adapter
from attribution_analysis.methods.result import AttributionResult
from attribution_analysis.utils.devices import make_accelerator, seed_everything
from attribution_analysis.utils.io import atomic_torch_save, atomic_write

NON_CONTEXT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "meta",
    "rows",
    "rationale",
)
CHECKPOINT_FORMAT = "diffmask/2"
"""Version 2: unbounded probe logits with a LayerNorm on the probe input (version 1 bounded them
with ``tanh``); version-1 checkpoints are refused with this reason."""


DEFAULT_CONVERGENCE = ConvergenceRule()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingHistory:
    """Per-step and per-epoch metrics, the run folder and the selected checkpoint."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    best_epoch: int | None = None
    best_checkpoint: Path | None = None
    convergence: dict | None = None

    @property
    def converged(self) -> bool:
        """True when the stopping rule found lambda and the validation L0 level."""
        return bool(self.convergence and self.convergence.get("converged"))

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "best_epoch": self.best_epoch,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "convergence": self.convergence,
        }


def split_batch(batch: dict, device: torch.device | str) -> tuple:
    """``(input_ids, attention_mask, context, meta)`` of a loader batch; every other tensor is
    context (e.g. ``history_emb``)."""
    context = {
        k: v.to(device)
        for k, v in batch.items()
        if k not in NON_CONTEXT_KEYS and isinstance(v, torch.Tensor)
    }
    ids = batch["input_ids"].to(device)
    return ids, batch["attention_mask"].to(device), context, batch.get("meta")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for ``model``'s weights; restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def default_run_dir(root: str | Path = "output/diffmask") -> Path:
    """``<root>/run_<YYYYmmdd_HHMMSS>``."""
    return Path(root) / f"run_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


# ---------------------------------------------------------------------- checkpoints
def _checkpoint(
    diffmask: DIFFMASK, fingerprint: str, optimizers: dict, scheduler, epoch: int, history, gen
) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "settings": diffmask.settings,
        "fingerprint": fingerprint,
        "state": {k: v.detach().cpu() for k, v in diffmask.state_dict().items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "history": json.dumps(history.to_dict()),
    }


def _read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DIFFMASK checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and blob.get("format") == "diffmask/1":
        raise ValueError(
            f"{path}: a DIFFMASK checkpoint of format diffmask/1 (tanh-bounded probe), which "
            f"this version ({CHECKPOINT_FORMAT}) cannot load; train a new one"
        )
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a DIFFMASK checkpoint (format {CHECKPOINT_FORMAT})")
    return blob


def check_compatible(blob: dict, model: nn.Module | ExplainedModel, path: str | Path) -> None:
    """Refuse a checkpoint made for another model, with the reason."""
    adapter = make_adapter(model)
    saved = blob["settings"]
    if saved["hidden_dim"] != adapter.hidden_size:
        raise ValueError(
            f"{path}: checkpoint was trained for hidden size {saved['hidden_dim']}, "
            f"the model has {adapter.hidden_size}"
        )
    if saved.get("explained_model") != adapter.name:
        raise ValueError(
            f"{path}: checkpoint explains a {saved.get('explained_model')!r} model, "
            f"not a {adapter.name!r}"
        )
    fingerprint = adapter.fingerprint()
    if blob["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path}: checkpoint was trained for other model weights (fingerprint "
            f"{blob['fingerprint']}, this model {fingerprint})"
        )


def _from_settings(model, settings: dict, state: dict) -> DIFFMASK:
    kwargs = DIFFMASK.constructor_settings(settings)
    diffmask = DIFFMASK(model, **kwargs)
    diffmask.load_state_dict(state)
    diffmask.settings["baseline_used"] = settings.get("baseline_used")
    return diffmask.to(next(diffmask.adapter.model.parameters()).device).eval()


def load_diffmask_checkpoint(path: str | Path, model: nn.Module | ExplainedModel) -> DIFFMASK:
    """A DIFFMASK (eval mode) from a checkpoint, after checking it was made for ``model``."""
    blob = _read_checkpoint(path)
    check_compatible(blob, model, path)
    return _from_settings(model, blob["settings"], blob["state"])


def rebind_diffmask(diffmask: DIFFMASK, model: nn.Module | ExplainedModel) -> DIFFMASK:
    """The same trained probe and baseline applied to another model of the same shape (used by
    the sanity check, which randomises the explained model's weights)."""
    return _from_settings(model, diffmask.settings, diffmask.state_dict())


# ---------------------------------------------------------------------- training
def _optimizers(diffmask: DIFFMASK, lr_probe: float, lr_baseline: float, lr_lambda: float):
    opts = {
        "probe": torch.optim.Adam(diffmask.probe.parameters(), lr=lr_probe),
        "lambda": torch.optim.Adam([diffmask.lagrange_multiplier], lr=lr_lambda, maximize=True),
    }
    if diffmask.baseline.requires_grad:
        opts["baseline"] = torch.optim.Adam([diffmask.baseline], lr=lr_baseline)
    return opts


@torch.no_grad()
def validate(diffmask: DIFFMASK, loader: Iterable, device) -> dict:
    """Deterministic-gate metrics over ``loader``: mean L0 (kept share), divergence, share
    within the margin, share with the same decision, share satisfying both."""
    was_training = diffmask.training
    diffmask.eval()
    sums = {"l0": 0.0, "divergence": 0.0, "within_margin": 0.0, "agreement": 0.0, "satisfied": 0.0}
    n = 0
    for batch in loader:
        ids, mask, ctx, _ = split_batch(batch, device)
        s = diffmask.step(ids, mask, ctx)
        sums["l0"] += s.l0.sum().item()
        sums["divergence"] += s.divergence.sum().item()
        sums["within_margin"] += s.within_margin.sum().item()
        sums["agreement"] += s.agreement.sum().item()
        sums["satisfied"] += (s.within_margin & s.agreement).sum().item()
        n += len(ids)
    diffmask.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _train_step(diffmask, batch, device, optimizers, scheduler, grad_clip, gen, accelerator):
    ids, mask, ctx, _ = split_batch(batch, device)
    with accelerator.autocast():
        step = diffmask.step(ids, mask, ctx, generator=gen)
        loss = diffmask.lagrangian(step)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"DIFFMASK loss became {loss.item()}")
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    diffmask.lagrange_multiplier.grad = diffmask.dual_signal(step).reshape(()).detach()
    params = [p for g in ("probe", "baseline") if g in optimizers for p in _params(optimizers[g])]
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers.values():
        opt.step()
    scheduler.step()
    diffmask.clamp_multiplier()
    out = {
        "loss": loss.item(),
        "l0": step.l0.mean().item(),
        "divergence": step.divergence.mean().item(),
        "within_margin": step.within_margin.float().mean().item(),
        "lambda": diffmask.lagrange_multiplier.item(),
    }
    if step.delivered_within_margin is not None:
        out["delivered_within_margin"] = step.delivered_within_margin.float().mean().item()
    return out


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _latest(ckpt_dir: Path) -> Path | None:
    found = sorted(
        ckpt_dir.glob("diffmask_epoch_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
    )
    return found[-1] if found else None


def _check_same_settings(saved: dict, current: dict, path: Path) -> None:
    """Resuming continues the same run: refuse a run folder trained with other settings."""
    keys = sorted((set(saved) | set(current)) - {"baseline_used"})
    diff = [k for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise ValueError(
            f"{path}: this run folder was trained with other DIFFMASK settings "
            f"({', '.join(diff)}); use a new run folder"
        )


def _restore(diffmask, optimizers, scheduler, gen, blob, ckpt_dir: Path) -> TrainingHistory:
    diffmask.load_state_dict(blob["state"])
    for k, opt in optimizers.items():
        opt.load_state_dict(blob["optimizers"][k])
    scheduler.load_state_dict(blob["scheduler"])
    gen.set_state(blob["generator"])
    saved = json.loads(blob["history"])
    history = TrainingHistory(saved["steps"], saved["epochs"], None, saved["best_epoch"])
    history.convergence = saved.get("convergence")
    if saved["best_checkpoint"]:
        history.best_checkpoint = ckpt_dir / "best.pt"
    return history


def train_diffmask(
    diffmask: DIFFMASK,
    train_loader: Iterable,
    n_epochs: int = 30,
    lr_probe: float = 1e-3,
    lr_baseline: float = 1e-3,
    lr_lambda: float = 0.5,
    device: str = "cpu",
    val_loader: Iterable | None = None,
    output_dir: str | Path | None = None,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
    target_within_margin: float = 0.95,
    seed: int = 0,
    resume: bool = True,
    mixed_precision: str = "no",
    quiet: bool = False,
    save_checkpoints: bool = True,
    convergence: ConvergenceRule | None = DEFAULT_CONVERGENCE,
) -> TrainingHistory:
    """Train ``diffmask`` on batches from ``train_loader`` (dicts with ``input_ids``,
    ``attention_mask`` and context tensors such as ``history_emb``).

    Training stops when ``convergence`` finds lambda and the validation L0 level (see
    :mod:`.convergence`), or at the cap of ``n_epochs`` epochs, in which case the run says so
    and ``history.converged`` is False. ``convergence=None`` always runs ``n_epochs`` epochs.

    Resumes from the latest ``diffmask_epoch_<N>.pt`` in ``output_dir/checkpoints`` when
    ``resume`` is true; the result equals an uninterrupted run (seeded, CPU). Returns the
    :class:`TrainingHistory`; ``diffmask`` ends in eval mode holding the selected checkpoint.
    """
    seed_everything(seed)
    accelerator = make_accelerator(device, mixed_precision)
    device_t = accelerator.device
    run_dir = Path(output_dir) if output_dir else default_run_dir()
    ckpt_dir = run_dir / "checkpoints"
    model = diffmask.adapter.model
    diffmask.to(device_t)
    model.to(device_t)
    optimizers = _optimizers(diffmask, lr_probe, lr_baseline, lr_lambda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizers["probe"], lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0
    )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history, start = TrainingHistory(run_dir=run_dir), 0
    latest = _latest(ckpt_dir) if resume and save_checkpoints else None
    if latest is not None:
        blob = _read_checkpoint(latest)
        check_compatible(blob, model, latest)
        _check_same_settings(blob["settings"], diffmask.settings, latest)
        history = _restore(diffmask, optimizers, scheduler, gen, blob, ckpt_dir)
        history.run_dir, start = run_dir, blob["epoch"]
        print(f"[diffmask] resumed from {latest}")
    best_l0 = min(
        (e["val_l0"] for e in history.epochs if e.get("epoch") == history.best_epoch),
        default=math.inf,
    )
    fingerprint = diffmask.adapter.fingerprint() if save_checkpoints else ""  # hashed once
    best_state: dict | None = None
    lambda_max = diffmask.settings["lambda_max"]
    if convergence is None:
        history.convergence = None
    elif history.epochs:  # judge a resumed run by the rule given now
        status = check_convergence(history.epochs, convergence, lambda_max)
        history.convergence = {**status.to_dict(), "rule": convergence.to_dict()}
    done = history.converged
    with frozen(model):
        for epoch in range(start + 1, n_epochs + 1):
            if done:
                break
            torch.manual_seed(seed * 7919 + epoch)  # loader shuffles depend on the epoch only
            diffmask.train()
            rows = []
            bar = tqdm(train_loader, desc=f"diffmask {epoch}/{n_epochs}", disable=quiet)
            for batch in bar:
                try:
                    m = _train_step(
                        diffmask,
                        batch,
                        device_t,
                        optimizers,
                        scheduler,
                        grad_clip,
                        gen,
                        accelerator,
                    )
                except TrainingDiverged as exc:
                    last = _latest(ckpt_dir) if save_checkpoints else None
                    raise TrainingDiverged(
                        f"{exc} at epoch {epoch}; stopped. Last good checkpoint: {last or 'none'}"
                    ) from None
                m.update(epoch=epoch, step=len(history.steps) + 1)
                history.steps.append(m)
                rows.append(m)
                bar.set_postfix(
                    l0=f"{m['l0']:.3f}",
                    div=f"{m['divergence']:.3f}",
                    lam=f"{m['lambda']:.2f}",
                    ok=f"{m['within_margin']:.2f}",
                )
            summary = {"epoch": epoch}
            keys = ["loss", "l0", "divergence", "within_margin", "lambda"]
            if rows and "delivered_within_margin" in rows[0]:
                keys.append("delivered_within_margin")
            for key in keys:
                summary[key] = sum(r[key] for r in rows) / max(len(rows), 1)
            if val_loader is not None:
                val = validate(diffmask, val_loader, device_t)
                summary.update({f"val_{k}": v for k, v in val.items()})
                if val["within_margin"] >= target_within_margin and val["l0"] < best_l0:
                    best_l0, history.best_epoch = val["l0"], epoch
                    if not save_checkpoints:  # keep the selected state in memory instead
                        best_state = {
                            k: v.detach().clone() for k, v in diffmask.state_dict().items()
                        }
            history.epochs.append(summary)
            if convergence is not None:
                status = check_convergence(history.epochs, convergence, lambda_max)
                summary["converged"] = status.converged
                history.convergence = {**status.to_dict(), "rule": convergence.to_dict()}
                done = status.converged
            if not quiet:
                print(
                    "[diffmask] "
                    + "  ".join(
                        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in summary.items()
                    )
                )
            if save_checkpoints:
                path = ckpt_dir / f"diffmask_epoch_{epoch}.pt"
                if history.best_epoch == epoch:
                    history.best_checkpoint = ckpt_dir / "best.pt"
                blob = _checkpoint(
                    diffmask, fingerprint, optimizers, scheduler, epoch, history, gen
                )
                atomic_torch_save(path, blob)
                if history.best_epoch == epoch:
                    atomic_torch_save(ckpt_dir / "best.pt", blob)
    _report_convergence(history, convergence, n_epochs, quiet)
    if history.best_checkpoint is not None and history.best_checkpoint.is_file():
        diffmask.load_state_dict(_read_checkpoint(history.best_checkpoint)["state"])
    elif best_state is not None:
        diffmask.load_state_dict(best_state)
    elif val_loader is not None and not quiet:
        print(
            f"[diffmask] no epoch reached a validation share of {target_within_margin:.0%} "
            "satisfied examples: keeping the last epoch"
        )
    if save_checkpoints:
        atomic_write(
            run_dir / "training_history.json",
            lambda p: p.write_text(json.dumps(history.to_dict(), indent=1)),
        )
    diffmask.eval()
    return history


def _report_convergence(
    history: TrainingHistory, rule: ConvergenceRule | None, n_epochs: int, quiet: bool
) -> None:
    """Say plainly whether training converged or stopped at the epoch cap."""
    if rule is None or history.convergence is None:
        return
    status = ConvergenceStatus.from_dict(history.convergence)
    history.convergence["stop_reason"] = "converged" if status.converged else "epoch cap"
    if quiet:
        return
    if status.converged:
        print(f"[diffmask] {status.describe()}")
    else:
        print(
            f"[diffmask] WARNING: stopped at the epoch cap ({n_epochs}) without converging: "
            f"{status.describe()}. Raise n_epochs to train further (the run resumes)."
        )


# ---------------------------------------------------------------------- extraction
def extract_attributions_diffmask(
    diffmask: DIFFMASK,
    loader: Iterable,
    n_samples: int | None = 100,
    device: str = "cpu",
    tokenizer=None,
    output_path: str | Path | None = None,
    return_results: bool = True,
    word_aggregation: str = "max",
    quiet: bool = False,
) -> list[AttributionResult]:
    """Attribute up to ``n_samples`` examples from ``loader``, batch by batch.

    Results stream to ``output_path`` (JSONL, one result per line; written to a temporary file
    and renamed when complete). With ``return_results=False`` nothing is kept in memory, so
    memory does not grow with the number of samples.
    """
    diffmask.eval()
    diffmask.to(device)
    diffmask.adapter.model.to(device).eval()
    kept: list[AttributionResult] = []
    done = 0

    def run(handle) -> None:
        nonlocal done
        bar = tqdm(total=n_samples, desc="attributions", disable=quiet)
        for batch in loader:
            if n_samples is not None and done >= n_samples:
                break
            ids, mask, ctx, meta = split_batch(batch, device)
            take = len(ids) if n_samples is None else min(len(ids), n_samples - done)
            ctx = {k: v[:take] for k, v in ctx.items()}
            results = diffmask.explain(
                ids[:take],
                mask[:take],
                ctx,
                tokenizer,
                meta[:take] if meta else None,
                word_aggregation,
            )
            for r in results:
                if handle is not None:
                    handle.write(r.to_json() + "\n")
                if return_results:
                    kept.append(r)
            done += take
            bar.update(take)
        bar.close()

    if output_path is None:
        run(None)
    else:

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as handle:
                run(handle)

        atomic_write(output_path, write)
    return kept
