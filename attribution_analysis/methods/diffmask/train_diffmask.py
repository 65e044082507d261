"""Train DIFFMASK (Lagrangian: min over probe and baseline, max over lambda >= 0).

The checkpoint format and loading live in :mod:`.checkpoint`, extraction in :mod:`.extraction`;
``load_diffmask_checkpoint``, ``rebind_diffmask`` and ``extract_attributions_diffmask`` are
re-exported here, the module of the public training API.

``train_diffmask`` minimises ``DIFFMASK.lagrangian`` (sparsity term + lambda * constraint term +
logit decay; see there) with Adam for the probe (``lr_probe``) and the baseline
(``lr_baseline``) and ascends lambda with Adam on ``DIFFMASK.dual_signal`` (``lr_lambda``),
lambda clamped to ``[0, lambda_max]`` after every step until it first rises above
``lambda_min`` (the constraint binds) and to ``[lambda_min, lambda_max]`` from then on
(:func:`floor_armed`). Training stops when the convergence
rule holds (:mod:`.convergence`), on a validation plateau (reported as not converged), or at
the ``n_epochs`` cap. The explained model is
frozen (no gradient reaches its weights) and in eval mode (dropout off). A checkpoint is written
atomically every epoch to ``<output_dir>/checkpoints/diffmask_epoch_<N>.pt``; the sparsest
epoch whose validation share of examples within the margin reaches ``target_within_margin``
(the share that also keeps the same decision is reported beside it) is copied to
``checkpoints/best.pt`` and loaded at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attribution_analysis.config import DiffMaskTrainingConfig
from attribution_analysis.data.batches import INDEX_KEY, split_batch
from attribution_analysis.methods.diffmask.checkpoint import (
    CHECKPOINT_FORMAT,
    check_compatible,
    check_same_settings,
    check_same_training,
    checkpoint_blob,
    latest_checkpoint,
    latest_readable_checkpoint,
    load_diffmask_checkpoint,
    read_checkpoint,
    rebind_diffmask,
    saved_settings,
    training_record,
)
from attribution_analysis.methods.diffmask.convergence import (
    ConvergenceRule,
    ConvergenceStatus,
    check_convergence,
)
from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.extraction import extract_attributions_diffmask
from attribution_analysis.methods.diffmask.original_cache import OriginalPassCache
from attribution_analysis.utils.devices import make_accelerator, seed_everything
from attribution_analysis.utils.distributed import (
    average_gradients,
    mean_over_processes,
    same_on_all,
)
from attribution_analysis.utils.io import atomic_torch_save, atomic_write, timestamped_dir
from attribution_analysis.utils.modes import eval_mode, frozen


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

    @property
    def stopped(self) -> bool:
        """True when training ended before its epoch cap: converged, or on a validation
        plateau (see :mod:`.convergence`)."""
        return self.converged or bool(self.convergence and self.convergence.get("plateau"))

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "best_epoch": self.best_epoch,
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "convergence": self.convergence,
        }


# ---------------------------------------------------------------------- training
def training_settings(config: DiffMaskTrainingConfig | None = None, **overrides):
    """``config`` (default: the library's) with single fields replaced by ``overrides``."""
    config = DiffMaskTrainingConfig() if config is None else config
    if not isinstance(config, DiffMaskTrainingConfig):
        raise TypeError(
            "train_diffmask's third argument is a DiffMaskTrainingConfig, got "
            f"{config!r}; pass single settings by keyword (e.g. n_epochs=10)"
        )
    valid = [f.name for f in dataclasses.fields(DiffMaskTrainingConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown DIFFMASK training setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return dataclasses.replace(config, **overrides)


def _optimizers(diffmask: DIFFMASK, lr_probe: float, lr_baseline: float, lr_lambda: float):
    opts = {
        "probe": torch.optim.Adam(diffmask.probe.parameters(), lr=lr_probe),
        "lambda": torch.optim.Adam([diffmask.lagrange_multiplier], lr=lr_lambda, maximize=True),
    }
    if diffmask.baseline.requires_grad:
        opts["baseline"] = torch.optim.Adam([diffmask.baseline], lr=lr_baseline)
    return opts


def original_pass(diffmask: DIFFMASK, batch: dict, ids, mask, ctx, cache: OriginalPassCache | None):
    """The batch's original pass: from ``cache`` when it holds every example of the batch
    (batches identify examples by ``example_index``), else computed (and stored)."""
    index = batch.get(INDEX_KEY) if cache is not None else None
    if index is None:
        return diffmask.original_pass(ids, mask, ctx)
    original = cache.get(index, mask)
    if original is None:
        original = diffmask.original_pass(ids, mask, ctx)
        cache.put(index, mask, original)
    return original


@torch.no_grad()
def validate(
    diffmask: DIFFMASK,
    loader: Iterable,
    device,
    cache: OriginalPassCache | None = None,
    accelerator=None,
) -> dict:
    """Deterministic-gate metrics over ``loader``: mean L0 (kept share), divergence, share
    within the margin, share with the same decision, share satisfying both. ``cache`` keeps
    the model's original passes for the next call. With several processes (``accelerator``
    and a loader it prepared) the per-example values of all processes are gathered (without
    the examples repeated to even out the last batch), so every process gets the same means."""
    keys = ("l0", "divergence", "within_margin", "agreement", "satisfied")
    sums = dict.fromkeys(keys, 0.0)
    n = 0
    with eval_mode(diffmask):
        for batch in loader:
            ids, mask, ctx, _ = split_batch(batch, device)
            ctx = diffmask.adapter.prepare_context(ctx)
            original = original_pass(diffmask, batch, ids, mask, ctx, cache)
            s = diffmask.step(ids, mask, ctx, original=original)
            values = torch.stack(
                [s.l0, s.divergence, s.within_margin, s.agreement, s.within_margin & s.agreement]
            ).float()  # [5, batch]
            if accelerator is not None and accelerator.num_processes > 1:
                values = accelerator.gather_for_metrics(values.T.contiguous()).T
            for key, row in zip(keys, values.sum(-1).tolist()):
                sums[key] += row
            n += values.shape[1]
    return {k: v / max(n, 1) for k, v in sums.items()}


def _train_step(
    diffmask, batch, device, optimizers, scheduler, grad_clip, gen, accelerator, cache, floor
):
    ids, mask, ctx, _ = split_batch(batch, device)
    with accelerator.autocast():
        ctx = diffmask.adapter.prepare_context(ctx)
        original = original_pass(diffmask, batch, ids, mask, ctx, cache)
        step = diffmask.step(ids, mask, ctx, generator=gen, original=original)
        loss = diffmask.lagrangian(step)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"DIFFMASK loss became {loss.item()}")
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    diffmask.lagrange_multiplier.grad = diffmask.dual_signal(step).reshape(()).detach()
    params = [p for g in ("probe", "baseline") if g in optimizers for p in _params(optimizers[g])]
    average_gradients(accelerator, [*params, diffmask.lagrange_multiplier])
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers.values():
        opt.step()
    scheduler.step()
    diffmask.clamp_multiplier(floor=floor)
    out = {
        "loss": loss.item(),
        "l0": step.l0.mean().item(),
        "divergence": step.divergence.mean().item(),
        "within_margin": step.within_margin.float().mean().item(),
        "lambda": diffmask.lagrange_multiplier.item(),
        "saturated": diffmask.saturated_share(step),
    }
    if step.delivered_within_margin is not None:
        out["delivered_within_margin"] = step.delivered_within_margin.float().mean().item()
    return mean_over_processes(accelerator, out)


def floor_armed(steps: list[dict], lambda_min: float) -> bool:
    """Whether the floor ``lambda_min`` holds: once lambda has risen above it (the constraint
    has bound), from the next step on. Before that, lambda may fall to 0, so that sparsity alone
    prunes the gates from fully open (a floor from the first step holds every gate open on
    small or slowly learning probes, and made lambda creep on the news task). Read from the
    per-step history, so a resumed run knows it."""
    return any(s["lambda"] > lambda_min for s in steps)


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


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
    config: DiffMaskTrainingConfig | None = None,
    *,
    val_loader: Iterable | None = None,
    output_dir: str | Path | None = None,
    device: str = "cpu",
    mixed_precision: str = "no",
    seed: int = 0,
    resume: bool = True,
    quiet: bool = False,
    save_checkpoints: bool = True,
    **overrides,
) -> TrainingHistory:
    """Train ``diffmask`` on batches from ``train_loader`` (dicts with ``input_ids``,
    ``attention_mask`` and context tensors such as ``history_emb``).

    ``config`` holds the training settings (a
    :class:`~attribution_analysis.config.DiffMaskTrainingConfig`, which documents each one; the
    library defaults when ``None``); keyword ``overrides`` replace single fields, e.g.
    ``n_epochs=10`` or ``convergence=None``.

    Training stops when ``config.convergence`` finds lambda and the validation L0 level (see
    :mod:`.convergence`); on a validation plateau (``patience`` epochs without a better epoch
    to deliver: ``history.converged`` False, ``stop_reason`` "plateau"); or at the cap of
    ``n_epochs`` epochs, in which case the run says so and ``history.converged`` is False.
    ``convergence=None`` always runs ``n_epochs`` epochs.

    With ``cache_original_pass`` (default), the frozen model's pass on the unmasked input is
    computed once per example and reused in later epochs (:mod:`.original_cache`; needs
    batches with ``example_index``, costs memory in the number of examples).

    Resumes from the latest ``diffmask_epoch_<N>.pt`` in ``output_dir/checkpoints`` when
    ``resume`` is true; the result equals an uninterrupted run (seeded, CPU). Returns the
    :class:`TrainingHistory`; ``diffmask`` ends in eval mode holding the selected checkpoint.

    Under ``accelerate launch`` / ``torchrun`` with N processes, ``DataLoader`` inputs are
    prepared by ``accelerate`` (each global batch split across the processes), gradients and
    the dual signal are averaged over the processes before every update (so all processes hold
    the same DIFFMASK), metrics are means over all examples, and only the main process prints
    and writes files. Each process draws its own gate noise, so a 2-process run follows another
    (equally valid) random path than a 1-process run.
    """
    t = training_settings(config, **overrides)
    n_epochs, convergence = t.n_epochs, t.convergence
    target_within_margin, warmup_steps = t.target_within_margin, t.warmup_steps
    target = target_within_margin if val_loader is not None else None  # plateau rule
    seed_everything(seed)
    accelerator = make_accelerator(device, mixed_precision)
    device_t = accelerator.device
    main = accelerator.is_main_process
    quiet = quiet or not main
    record = training_record(t, seed, train_loader, val_loader)  # what a resume must keep
    train_loader = _prepared(train_loader, accelerator)
    val_loader = _prepared(val_loader, accelerator) if val_loader is not None else None
    run_dir = Path(output_dir) if output_dir else timestamped_dir("output/diffmask")
    run_dir = Path(same_on_all(str(run_dir), accelerator))
    ckpt_dir = run_dir / "checkpoints"
    model = diffmask.adapter.model
    diffmask.to(device_t)
    model.to(device_t)
    optimizers = _optimizers(diffmask, t.lr_probe, t.lr_baseline, t.lr_lambda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizers["probe"], lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0
    )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history, start = TrainingHistory(run_dir=run_dir), 0
    found = latest_readable_checkpoint(ckpt_dir) if resume and save_checkpoints else None
    if found is not None:
        latest, blob = found
        check_compatible(blob, model, latest)
        check_same_settings(saved_settings(blob["settings"]), diffmask.settings, latest)
        check_same_training(blob.get("training"), record, latest)
        history = _restore(diffmask, optimizers, scheduler, gen, blob, ckpt_dir)
        history.run_dir, start = run_dir, blob["epoch"]
        if main:
            print(f"[diffmask] resumed from {latest}")
    if accelerator.process_index > 0:  # own gate noise per process (process 0: as one process)
        gen.manual_seed(seed + 7907 * accelerator.process_index + 104729 * start)
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
        status = check_convergence(
            history.epochs, convergence, lambda_max, target, target_within_margin
        )
        history.convergence = {**status.to_dict(), "rule": convergence.to_dict()}
    done = history.stopped
    floor = floor_armed(history.steps, diffmask.settings.get("lambda_min", 0.0))
    train_cache = OriginalPassCache() if t.cache_original_pass else None
    val_cache = OriginalPassCache() if t.cache_original_pass else None
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
                        t.grad_clip,
                        gen,
                        accelerator,
                        train_cache,
                        floor=floor,
                    )
                except TrainingDiverged as exc:
                    last = latest_checkpoint(ckpt_dir) if save_checkpoints else None
                    raise TrainingDiverged(
                        f"{exc} at epoch {epoch}; stopped. Last good checkpoint: {last or 'none'}"
                    ) from None
                m.update(epoch=epoch, step=len(history.steps) + 1)
                history.steps.append(m)
                floor = floor or floor_armed([m], diffmask.settings.get("lambda_min", 0.0))
                rows.append(m)
                bar.set_postfix(
                    l0=f"{m['l0']:.3f}",
                    div=f"{m['divergence']:.3f}",
                    lam=f"{m['lambda']:.2f}",
                    ok=f"{m['within_margin']:.2f}",
                )
            summary = {"epoch": epoch}
            keys = ["loss", "l0", "divergence", "within_margin", "lambda"]
            for key in ("delivered_within_margin", "saturated"):
                if rows and all(key in r for r in rows):
                    keys.append(key)
            for key in keys:
                summary[key] = sum(r[key] for r in rows) / max(len(rows), 1)
            if val_loader is not None:
                val = validate(diffmask, val_loader, device_t, val_cache, accelerator)
                summary.update({f"val_{k}": v for k, v in val.items()})
                if val["within_margin"] >= target_within_margin and val["l0"] < best_l0:
                    best_l0, history.best_epoch = val["l0"], epoch
                    if not save_checkpoints:  # keep the selected state in memory instead
                        best_state = {
                            k: v.detach().clone() for k, v in diffmask.state_dict().items()
                        }
            history.epochs.append(summary)
            if convergence is not None:
                status = check_convergence(
                    history.epochs, convergence, lambda_max, target, target_within_margin
                )
                summary["converged"] = status.converged
                history.convergence = {**status.to_dict(), "rule": convergence.to_dict()}
                done = status.stop
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
                if main:
                    blob = checkpoint_blob(
                        diffmask, fingerprint, optimizers, scheduler, epoch, history, gen, record
                    )
                    atomic_torch_save(path, blob)
                    if history.best_epoch == epoch:
                        atomic_torch_save(ckpt_dir / "best.pt", blob)
                accelerator.wait_for_everyone()
    _report_convergence(history, convergence, n_epochs, quiet)
    if history.best_checkpoint is not None and history.best_checkpoint.is_file():
        diffmask.load_state_dict(read_checkpoint(history.best_checkpoint)["state"])
    elif best_state is not None:
        diffmask.load_state_dict(best_state)
    elif val_loader is not None and not quiet:
        print(
            f"[diffmask] no epoch reached a validation share of {target_within_margin:.0%} "
            "satisfied examples: keeping the last epoch"
        )
    if save_checkpoints and main:
        atomic_write(
            run_dir / "training_history.json",
            lambda p: p.write_text(json.dumps(history.to_dict(), indent=1)),
        )
    diffmask.eval()
    return history


def _prepared(loader: Iterable, accelerator) -> Iterable:
    """``loader`` sharded across processes by ``accelerate`` (unchanged with one process)."""
    if accelerator.num_processes == 1:
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"training on {accelerator.num_processes} processes needs torch DataLoaders (to "
            f"shard them), got {type(loader).__name__}"
        )
    return accelerator.prepare_data_loader(loader)


def _report_convergence(
    history: TrainingHistory, rule: ConvergenceRule | None, n_epochs: int, quiet: bool
) -> None:
    """Say plainly whether training converged or stopped at the epoch cap."""
    if rule is None or history.convergence is None:
        return
    status = ConvergenceStatus.from_dict(history.convergence)
    reason = "converged" if status.converged else "plateau" if status.plateau else "epoch cap"
    history.convergence["stop_reason"] = reason
    if quiet:
        return
    if status.converged:
        print(f"[diffmask] {status.describe()}")
    elif status.plateau:
        print(
            f"[diffmask] stopped on a validation plateau, NOT converged (lambda or the "
            f"validation L0 still moving): {status.describe()}. The best epoch "
            f"({history.best_epoch}) is kept."
        )
    else:
        print(
            f"[diffmask] WARNING: stopped at the epoch cap ({n_epochs}) without converging: "
            f"{status.describe()}. Raise n_epochs to train further (the run resumes)."
        )


__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainingDiverged",
    "TrainingHistory",
    "extract_attributions_diffmask",
    "load_diffmask_checkpoint",
    "rebind_diffmask",
    "train_diffmask",
    "validate",
]
