"""Sharding work across the processes of an :class:`accelerate.Accelerator` and gathering the
results in a stable order (the same order as a single-process run).

Two shardings are used: *contiguous* row ranges (tables such as news vectors, gathered as one
tensor) and *interleaved* sequences (``items[rank::world]``, e.g. impressions or explanation
examples, gathered as Python objects and re-interleaved). With one process (or no accelerator)
every helper is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def world(accelerator) -> tuple[int, int]:
    """``(rank, number of processes)``; ``(0, 1)`` without an accelerator."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def row_range(n_rows: int, rank: int, n_procs: int) -> tuple[int, int]:
    """Contiguous rows ``[start, end)`` of process ``rank``; sizes differ by at most one chunk."""
    chunk = -(-n_rows // n_procs)
    return min(rank * chunk, n_rows), min((rank + 1) * chunk, n_rows)


def gather_rows(
    accelerator, n_rows: int, compute: Callable[[int, int], torch.Tensor]
) -> torch.Tensor:
    """``compute(start, end) -> [end - start, ...]`` on this process's contiguous rows, gathered
    into ``[n_rows, ...]`` on every process (row order as with one process)."""
    rank, n_procs = world(accelerator)
    start, end = row_range(n_rows, rank, n_procs)
    part = compute(start, end)
    if n_procs == 1:
        return part
    chunk = -(-n_rows // n_procs)
    padded = part.new_zeros((chunk, *part.shape[1:]))
    padded[: len(part)] = part
    gathered = accelerator.gather(padded.to(accelerator.device))
    return gathered.reshape(n_procs * chunk, *part.shape[1:])[:n_rows].to(part.device)


def interleaved_shard(items: Sequence[T], accelerator) -> Sequence[T]:
    """This process's share ``items[rank::world]``."""
    rank, n_procs = world(accelerator)
    return items if n_procs == 1 else items[rank::n_procs]


def gather_interleaved(results: list[Any], n_items: int, accelerator) -> list[Any]:
    """Per-item ``results`` of :func:`interleaved_shard` from every process, back in item order
    (on every process)."""
    rank, n_procs = world(accelerator)
    if n_procs == 1:
        return results
    from accelerate.utils import gather_object

    per_rank = gather_object([results])  # one list per process, in rank order
    ordered: list[Any] = [None] * n_items
    for r, part in enumerate(per_rank):
        ordered[r::n_procs] = part
    return ordered
