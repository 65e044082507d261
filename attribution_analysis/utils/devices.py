"""Device and precision through ``accelerate``."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import set_seed

VALID_DEVICES = ("auto", "cpu", "cuda")
VALID_PRECISION = ("no", "fp16", "bf16")


def make_accelerator(device: str = "auto", mixed_precision: str = "no") -> Accelerator:
    """An :class:`accelerate.Accelerator` for ``device`` (auto, cpu, cuda) and precision."""
    if device not in VALID_DEVICES:
        raise ValueError(f"device must be one of {VALID_DEVICES}, got {device!r}")
    if mixed_precision not in VALID_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {VALID_PRECISION}, got {mixed_precision!r}"
        )
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    set_seed(seed)
