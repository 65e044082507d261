"""Device and precision through ``accelerate``."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

VALID_DEVICES = ("auto", "cpu", "cuda")
VALID_PRECISION = ("no", "fp16", "bf16")


def check_device(device: str) -> str:
    """``device`` if valid and present: ``cuda`` without a CUDA GPU is an error, never a silent
    fall-back to the CPU."""
    if device not in VALID_DEVICES:
        raise ValueError(f"device must be one of {VALID_DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available here")
    return device


def runs_on_cpu(device: str, environ=os.environ) -> bool:
    """Whether the accelerator is told ``cpu=True``: for ``cpu``, and for ``auto`` on a machine
    without a CUDA GPU when a launcher started several processes (``WORLD_SIZE`` > 1). accelerate
    forms a multi-process CPU group (gloo) only with ``cpu=True``; without it every process of a
    ``torchrun --nproc_per_node 2`` on a CPU-only machine ran the whole command alone. A single
    process with ``auto`` keeps accelerate's own choice."""
    if device == "cpu":
        return True
    launched = int(environ.get("WORLD_SIZE", "1")) > 1
    return device == "auto" and launched and not torch.cuda.is_available()


def make_accelerator(device: str = "auto", mixed_precision: str = "no") -> Accelerator:
    """An :class:`accelerate.Accelerator` for ``device`` (auto, cpu, cuda) and precision.

    Prepared loaders split each batch across the processes (``split_batches``): a configured
    batch size is the global batch, whatever the number of processes."""
    check_device(device)
    if mixed_precision not in VALID_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {VALID_PRECISION}, got {mixed_precision!r}"
        )
    return Accelerator(
        cpu=runs_on_cpu(device),
        mixed_precision=mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) and use torch's deterministic kernels where
    it has them: on the CPU some backward passes (e.g. accumulating into indexed rows)
    otherwise sum in a thread-dependent order, which made two runs of the same command differ
    by about 1e-5 in the recommender's weights. ``warn_only``: an operation without a
    deterministic kernel warns instead of failing."""
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
