"""Attributions of any method for every example of a loader, streamed to JSONL: one path for
every method's results (DIFFMASK included)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from attribution_analysis.data.batches import split_batch
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.result import AttributionResult
from attribution_analysis.utils.distributed import per_process, world
from attribution_analysis.utils.io import atomic_write


def extract_attributions(
    method: AttributionMethod,
    loader: Iterable,
    n_samples: int | None = 100,
    device: str = "cpu",
    tokenizer=None,
    output_path: str | Path | None = None,
    return_results: bool = True,
    quiet: bool = False,
    accelerator=None,
) -> list[AttributionResult]:
    """``method.explain`` on up to ``n_samples`` examples from ``loader``, batch by batch.

    Results stream to ``output_path`` (JSONL, one result per line; written to a temporary file
    and renamed when complete). With ``return_results=False`` nothing is kept in memory, so
    memory does not grow with the number of samples.

    With several processes (``accelerator``), process ``r`` explains batches ``r, r + N, ...``
    of ``loader`` (every process iterates the same unshuffled loader); after each round of N
    batches the results are gathered on the main process, which alone writes, in loader order:
    the file equals a one-process run's. Every process returns the results (if asked).
    """
    model = method.adapter.model
    if hasattr(model, "to"):
        model.to(device)
    rank, n_procs = world(accelerator)
    kept: list[AttributionResult] = []
    done = 0

    def run(handle) -> None:
        nonlocal done
        total, dataset = n_samples, getattr(loader, "dataset", None)
        if hasattr(dataset, "__len__"):  # a bar of the examples there are, not of the cap
            total = len(dataset) if n_samples is None else min(n_samples, len(dataset))
        bar = tqdm(total=total, desc="attributions", disable=quiet or rank > 0)
        mine: list[AttributionResult] = []
        last = -1
        for i, batch in enumerate(loader):
            if n_samples is not None and done >= n_samples:
                break
            take = len(batch["input_ids"])
            take = take if n_samples is None else min(take, n_samples - done)
            if i % n_procs == rank:
                mine = _explain_batch(method, batch, take, device, tokenizer)
            done += take
            bar.update(take)
            last = i
            if (i + 1) % n_procs == 0:
                _flush(_gather_round(mine, accelerator), handle, kept, return_results)
                mine = []
        if (last + 1) % n_procs != 0:  # the last, incomplete round
            _flush(_gather_round(mine, accelerator), handle, kept, return_results)
        bar.close()

    if output_path is None or rank > 0:
        run(None)
    else:

        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as handle:
                run(handle)

        atomic_write(output_path, write)
    if accelerator is not None and n_procs > 1:
        accelerator.wait_for_everyone()
    return kept


def _explain_batch(method, batch, take, device, tokenizer) -> list[AttributionResult]:
    ids, mask, ctx, meta = split_batch(batch, device)
    ctx = {k: v[:take] for k, v in ctx.items()}
    return method.explain(ids[:take], mask[:take], ctx, tokenizer, meta[:take] if meta else None)


def _gather_round(mine: list[AttributionResult], accelerator) -> list[AttributionResult]:
    """Results of one round (one batch per process), in batch order, on every process."""
    return [r for part in per_process(mine, accelerator) for r in part]


def _flush(results, handle, kept: list, return_results: bool) -> None:
    for r in results:
        if handle is not None:
            handle.write(r.to_json() + "\n")
        if return_results:
            kept.append(r)


__all__ = ["extract_attributions"]
