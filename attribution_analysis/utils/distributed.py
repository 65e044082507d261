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


def per_process(obj: Any, accelerator) -> list[Any]:
    """``obj`` of every process, in rank order, on every process (``[obj]`` with one)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def gather_interleaved(results: list[Any], n_items: int, accelerator) -> list[Any]:
    """Per-item ``results`` of :func:`interleaved_shard` from every process, back in item order
    (on every process)."""
    _, n_procs = world(accelerator)
    if n_procs == 1:
        return results
    per_rank = per_process(results, accelerator)
    ordered: list[Any] = [None] * n_items
    for r, part in enumerate(per_rank):
        ordered[r::n_procs] = part
    return ordered


def average_gradients(accelerator, params: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the processes (in place)."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad.contiguous(), reduction="mean")


def mean_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each float of ``values`` averaged over the processes (one collective call)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = accelerator.reduce(t.to(accelerator.device), reduction="mean").cpu()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def is_main(accelerator) -> bool:
    """Whether this is the process that writes files and prints (always without one)."""
    return accelerator is None or accelerator.is_main_process


def same_on_all(value: T, accelerator) -> T:
    """The main process's ``value`` on every process (e.g. a timestamped folder name)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def wait(accelerator) -> None:
    """Barrier: every process waits here until all arrive (no-op with one process)."""
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
