"""DIFFMASK checkpoints: the file format, safe loading, the check that a checkpoint was made for
the model at hand, and the run folder's per-epoch files.

A checkpoint is a ``torch.save`` dict of tensors and plain values, written atomically and read
with ``torch.load(..., weights_only=True)`` (no pickled code runs). Its ``format`` names the
version; its ``fingerprint`` identifies the explained model's weights, so a checkpoint made for
another model is refused with the reason. A training run keeps one file per epoch,
``<run>/checkpoints/diffmask_epoch_<N>.pt``, and the selected epoch as ``best.pt``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from attribution_analysis.config import DiffMaskTrainingConfig
from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.explained_model import ExplainedModel, make_adapter
from attribution_analysis.utils.io import UnreadableFileError, load_torch_file

CHECKPOINT_FORMAT = "diffmask/2"
"""Version 2: unbounded probe logits with a LayerNorm on the probe input (version 1 bounded them
with ``tanh``); version-1 checkpoints are refused with this reason."""

RESUME_TRAINING_KEYS = (
    "lr_probe",
    "lr_baseline",
    "lr_lambda",
    "warmup_steps",
    "grad_clip",
    "target_within_margin",
)
"""Training settings a resumed run must share with its run folder (with the seed and the data:
:func:`training_record`): they shape the path the saved optimizer, scheduler and selection
state continue. ``n_epochs`` (the cap) and the convergence rule may change on resume."""


def training_record(
    training: DiffMaskTrainingConfig, seed: int, train_loader: Iterable, val_loader: Iterable | None
) -> dict:
    """What a resumed run must keep, as stored in every epoch checkpoint: the settings of
    ``training`` named in :data:`RESUME_TRAINING_KEYS` (as plain floats and ints), the training
    seed, and for each loader its batch size, its number of examples and, for a dataset of
    explanation examples (``dataset.examples``), a hash of which examples they are (``None``
    where a loader does not tell)."""
    record = {
        k: _plain(getattr(training, k), int if k == "warmup_steps" else float)
        for k in RESUME_TRAINING_KEYS
    }
    record["seed"] = int(seed)
    for name, loader in (("train", train_loader), ("val", val_loader)):
        dataset = getattr(loader, "dataset", None)
        record[f"{name}_batch_size"] = _plain(getattr(loader, "batch_size", None), int)
        record[f"{name}_examples"] = len(dataset) if hasattr(dataset, "__len__") else None
        record[f"{name}_ids"] = _examples_hash(getattr(dataset, "examples", None))
    return record


def _plain(value, kind: type):
    """``value`` as a plain ``kind`` (safe loading refuses numpy scalars); ``None`` stays."""
    return None if value is None else kind(value)


def _examples_hash(examples) -> str | None:
    """sha256 (16 hex digits) of the examples' ``impression.impression_id`` and ``position``,
    in order; ``None`` for anything else."""
    try:
        keys = [f"{e.impression.impression_id}:{e.position}" for e in examples]
    except (AttributeError, TypeError):
        return None
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def checkpoint_blob(
    diffmask: DIFFMASK,
    fingerprint: str,
    optimizers: dict,
    scheduler,
    epoch: int,
    history,
    gen,
    training: dict | None = None,
) -> dict:
    """Everything needed to resume training after ``epoch``: settings, the training settings a
    resumed run must keep (``training``: :func:`training_record`), the explained model's
    fingerprint, DIFFMASK's state, optimizer, scheduler and random-generator states and the
    training history (JSON text). Tensors only on the CPU; loadable with ``weights_only``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "settings": diffmask.settings,
        "training": training,
        "fingerprint": fingerprint,
        "state": {k: v.detach().cpu() for k, v in diffmask.state_dict().items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "history": json.dumps(history.to_dict()),
    }


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (safe loading), refusing other files with the reason."""
    path = Path(path)
    blob = load_torch_file(path, "DIFFMASK checkpoint")
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


def saved_settings(settings: dict) -> dict:
    """A checkpoint's settings, with the defaults of settings added since it was written:
    ``lambda_min`` 0 (checkpoints from before the floor were trained without one),
    ``delivered_constraint`` False (nor with the hinge on the delivered mask), ``probe_context``
    ``"none"``, ``delivered_gradient`` ``"exact"`` and ``hinge_ratio`` 1 (the behaviour before
    those settings)."""
    return {
        "lambda_min": 0.0,
        "delivered_constraint": False,
        "probe_context": "none",
        "delivered_gradient": "exact",
        "hinge_ratio": 1.0,
        **settings,
    }


def _from_settings(model, settings: dict, state: dict) -> DIFFMASK:
    settings = saved_settings(settings)
    kwargs = DIFFMASK.constructor_settings(settings)
    diffmask = DIFFMASK(model, **kwargs)
    diffmask.load_state_dict(state)
    diffmask.settings["baseline_used"] = settings.get("baseline_used")
    return diffmask.to(next(diffmask.adapter.model.parameters()).device).eval()


def load_diffmask_checkpoint(path: str | Path, model: nn.Module | ExplainedModel) -> DIFFMASK:
    """A DIFFMASK (eval mode) from a checkpoint, after checking it was made for ``model``."""
    blob = read_checkpoint(path)
    check_compatible(blob, model, path)
    return _from_settings(model, blob["settings"], blob["state"])


def rebind_diffmask(diffmask: DIFFMASK, model: nn.Module | ExplainedModel) -> DIFFMASK:
    """The same trained probe and baseline applied to another model of the same shape (used by
    the sanity check, which randomises the explained model's weights)."""
    return _from_settings(model, diffmask.settings, diffmask.state_dict())


def epoch_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``diffmask_epoch_<N>.pt`` files of a run folder, oldest first."""
    return sorted(ckpt_dir.glob("diffmask_epoch_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = epoch_checkpoints(ckpt_dir)
    return found[-1] if found else None


def latest_readable_checkpoint(ckpt_dir: Path, warn: bool = True) -> tuple[Path, dict] | None:
    """The newest epoch checkpoint that can be read, with its contents; an unreadable one (e.g.
    truncated by a crash) is reported (when ``warn``) and the previous epoch is used instead."""
    for path in reversed(epoch_checkpoints(ckpt_dir)):
        try:
            return path, read_checkpoint(path)
        except UnreadableFileError as exc:
            if warn:
                print(f"[diffmask] WARNING: {exc}; trying the previous epoch")
    return None


def check_resumable(ckpt_dir: Path, diffmask: DIFFMASK, training: dict | None = None) -> None:
    """Refuse, before anything is written, a run folder whose checkpoints were made for another
    model, with other DIFFMASK settings or (given ``training``, a :func:`training_record`) with
    other training settings (a folder without checkpoints is fine)."""
    found = latest_readable_checkpoint(ckpt_dir, warn=False)  # training warns when it resumes
    if found is not None:
        path, blob = found
        check_compatible(blob, diffmask.adapter, path)
        check_same_settings(saved_settings(blob["settings"]), diffmask.settings, path)
        if training is not None:
            check_same_training(blob.get("training"), training, path)


def check_same_training(saved: dict | None, current: dict, path: Path) -> None:
    """Resuming continues the same run: refuse other learning rates, warm-up, clipping,
    selection target, seed, batch sizes or training and validation examples than the folder's
    (``saved`` None: a checkpoint from before these were recorded, not checked)."""
    if saved is None:
        return
    diff = _differing(saved, current)
    if diff:
        values = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in diff)
        raise ValueError(
            f"{path}: this run folder was trained with other training settings ({values}); "
            "resume with the folder's settings or use a new run folder (n_epochs and the "
            "convergence rule may change on resume)"
        )


def check_same_settings(saved: dict, current: dict, path: Path) -> None:
    """Resuming continues the same run: refuse a run folder trained with other settings."""
    diff = _differing(saved, current, ignore=("baseline_used",))
    if diff:
        hint = ""
        if "probe_context" in diff:
            hint = (
                f" (probe_context: the folder's {saved.get('probe_context')!r}, now "
                f"{current.get('probe_context')!r}; the default 'auto' reads the user vector on "
                f"NRMS: set diffmask.probe.probe_context: {saved.get('probe_context')} to resume)"
            )
        raise ValueError(
            f"{path}: this run folder was trained with other DIFFMASK settings "
            f"({', '.join(diff)}){hint}; use a new run folder"
        )


def _differing(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys (sorted, over both dicts, less ``ignore``) whose values differ."""
    keys = sorted((set(saved) | set(current)) - set(ignore))
    return [k for k in keys if saved.get(k) != current.get(k)]
