"""Attributions of any method for every example of a loader, streamed to JSONL: one path for
every method's results (DIFFMASK included)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from attribution_analysis.data.batches import split_batch
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.result import AttributionResult
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
) -> list[AttributionResult]:
    """``method.explain`` on up to ``n_samples`` examples from ``loader``, batch by batch.

    Results stream to ``output_path`` (JSONL, one result per line; written to a temporary file
    and renamed when complete). With ``return_results=False`` nothing is kept in memory, so
    memory does not grow with the number of samples.
    """
    model = method.adapter.model
    if hasattr(model, "to"):
        model.to(device)
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
            results = method.explain(
                ids[:take], mask[:take], ctx, tokenizer, meta[:take] if meta else None
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


__all__ = ["extract_attributions"]
