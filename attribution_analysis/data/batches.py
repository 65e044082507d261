"""The batch dictionaries that the loaders of explanation examples produce, and how an attribution
method splits one into the explained text and its context.

A batch holds ``input_ids`` and ``attention_mask`` ``[batch, tokens]``, optional bookkeeping
(``meta`` ids, ``rows``, ``labels``, ``rationale``, ``example_index``) and every other tensor is
*context*: fixed inputs of the explained model such as the user's ``history_emb [batch,
history, dim]``.
"""

from __future__ import annotations

import torch

INDEX_KEY = "example_index"
"""``[batch]`` positions of the batch's examples in their dataset (identifies an example across
epochs, e.g. for caching its original forward pass)."""

NON_CONTEXT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "meta",
    "rows",
    "rationale",
    INDEX_KEY,
)
"""Batch keys that are not context of the explained model."""


def split_batch(batch: dict, device: torch.device | str) -> tuple:
    """``(input_ids, attention_mask, context, meta)`` of a loader batch, tensors on ``device``;
    every tensor not in :data:`NON_CONTEXT_KEYS` is context (e.g. ``history_emb``)."""
    context = {
        k: v.to(device)
        for k, v in batch.items()
        if k not in NON_CONTEXT_KEYS and isinstance(v, torch.Tensor)
    }
    ids = batch["input_ids"].to(device)
    return ids, batch["attention_mask"].to(device), context, batch.get("meta")
