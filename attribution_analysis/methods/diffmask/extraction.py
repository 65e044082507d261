"""Attributions of a trained DIFFMASK for every example of a loader, streamed to JSONL (the
generic :func:`~attribution_analysis.methods.extraction.extract_attributions` through
:class:`~.diffmask_method.DiffMaskMethod`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.extraction import extract_attributions
from attribution_analysis.methods.result import AttributionResult


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
    accelerator=None,
) -> list[AttributionResult]:
    """Attribute up to ``n_samples`` examples from ``loader`` with ``diffmask`` (scores, the
    original and masked outputs and the divergence); see ``extract_attributions`` (which also
    says how ``accelerator`` shares the batches across processes)."""
    diffmask.to(device)
    method = DiffMaskMethod(diffmask=diffmask, word_aggregation=word_aggregation)
    return extract_attributions(
        method,
        loader,
        n_samples,
        device,
        tokenizer,
        output_path,
        return_results,
        quiet,
        accelerator,
    )


__all__ = ["extract_attributions_diffmask"]
