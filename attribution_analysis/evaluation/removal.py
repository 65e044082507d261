"""Token removal for the faithfulness metrics: ``predict(keep)`` for one example, on token ids.

:func:`make_predict` returns the callable that
:mod:`attribution_analysis.evaluation.faithfulness` expects,
``predict(keep: Bool[n_variants, tokens]) -> Tensor[n_variants]``, giving the explained output
(the click probability ``adapter.explained_output``) of one example with the positions where
``keep`` is False removed. Removal works on token ids (never on decoded and re-tokenised text)
or on word embeddings. The operations (:data:`OPERATIONS`):

* ``mask``: the id becomes ``[MASK]``; length, positions and attention unchanged;
* ``pad``: the id becomes ``[PAD]`` but stays attended; length and positions unchanged;
* ``delete``: the token is dropped and the rest re-packed to the left: later tokens move to
  earlier positions and the attention mask shrinks (the tensor keeps its width, padded);
* ``baseline``: the word embedding becomes ``baseline_embedding [hidden]`` (e.g. DIFFMASK's
  learned baseline); positions unchanged.

The numbers depend on the operation: callers record it (e.g. ``OPERATIONS[operation]``) beside
every metric they report.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attribution_analysis.methods.explained_model import Context, ExplainedModel, make_adapter
from attribution_analysis.utils.modes import eval_mode

OPERATIONS: dict[str, str] = {
    "mask": "removed tokens replaced by the [MASK] id (attended, positions kept)",
    "pad": "removed tokens replaced by the [PAD] id (still attended, positions kept)",
    "delete": "removed tokens dropped and the sequence re-packed (attention mask shrinks)",
    "baseline": "word embeddings of removed tokens replaced by a baseline vector",
}

Predict = Callable[[torch.Tensor], torch.Tensor]


def removed_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    operation: str,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks ``[n_variants, tokens]`` of the variants ``keep
    [n_variants, tokens]`` of one example ``input_ids``/``attention_mask [tokens]``, for the id
    operations ``mask``, ``pad`` and ``delete``. Padding positions are never changed (``keep``
    is ignored there)."""
    if operation not in ("mask", "pad", "delete"):
        raise ValueError(f"removed_ids handles mask, pad and delete, not {operation!r}")
    keep = keep.to(input_ids.device).bool()
    attended = attention_mask.bool()[None].expand_as(keep)
    ids = input_ids[None].expand_as(keep)
    masks = attention_mask[None].expand_as(keep).clone()
    if operation == "delete":
        return _delete(ids, attended & keep, masks, _require(pad_token_id, "pad_token_id"))
    token = mask_token_id if operation == "mask" else pad_token_id
    token = _require(token, f"{operation}_token_id")
    return torch.where(keep | ~attended, ids, torch.full_like(ids, token)), masks


def _require(value: int | None, name: str) -> int:
    if value is None:
        raise ValueError(f"this removal operation needs {name}")
    return int(value)


def _delete(
    ids: torch.Tensor, kept: torch.Tensor, masks: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept tokens to the front (order kept), pad the rest, shrink the attention."""
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices
    kept_sorted = kept.gather(1, order)
    packed = torch.where(kept_sorted, ids.gather(1, order), torch.full_like(ids, pad_token_id))
    return packed, kept_sorted.to(masks.dtype)


def _batch_of_one(adapter: ExplainedModel, context: Context) -> Context:
    context = adapter.prepare_context(context)
    for key, value in context.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] != 1:
            raise ValueError(f"context[{key!r}] must hold one example, got {tuple(value.shape)}")
    return context


def _expand(context: Context, n: int) -> Context:
    return {
        k: v.expand(n, *v.shape[1:]) if torch.is_tensor(v) and v.dim() > 0 else v
        for k, v in context.items()
    }


def make_predict(
    adapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: Context,
    operation: str,
    mask_token_id: int | None = None,
    pad_token_id: int | None = None,
    baseline_embedding: torch.Tensor | None = None,
    batch_size: int = 64,
) -> Predict:
    """``predict(keep [n_variants, tokens]) -> [n_variants]`` explained outputs (probabilities)
    of one example under ``operation`` (see the module docstring; record it with the results).

    Args:
        adapter: an ``ExplainedModel`` (or a model :func:`make_adapter` accepts).
        input_ids, attention_mask: the example ``[tokens]``.
        context: its context as a batch of one (e.g. ``history_emb [1, history, dim]``).
        operation: ``mask``, ``pad``, ``delete`` or ``baseline``.
        mask_token_id, pad_token_id: needed by ``mask`` and by ``pad``/``delete``.
        baseline_embedding: ``[hidden]``, needed by ``baseline``.
        batch_size: variants per forward pass.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {tuple(OPERATIONS)}, got {operation!r}")
    if operation == "baseline" and baseline_embedding is None:
        raise ValueError("operation 'baseline' needs baseline_embedding")
    if operation == "mask":
        _require(mask_token_id, "mask_token_id")
    if operation in ("pad", "delete"):
        _require(pad_token_id, "pad_token_id")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    adapter = make_adapter(adapter)
    context = _batch_of_one(adapter, context)

    def run(keep: torch.Tensor) -> torch.Tensor:
        if operation == "baseline":
            ids, masks = input_ids[None].expand(len(keep), -1), attention_mask[None]
            words = adapter.embed(ids)
            base = baseline_embedding.to(words.device, words.dtype)
            words = torch.where(keep.to(words.device).bool()[..., None], words, base)
            masks = masks.expand(len(keep), -1)
        else:
            ids, masks = removed_ids(
                input_ids, attention_mask, keep, operation, mask_token_id, pad_token_id
            )
            words = adapter.embed(ids)
        ctx = _expand(context, len(keep))
        out = adapter.forward(words, masks, ctx)
        return adapter.explained_output(out.output, ctx)

    def predict(keep: torch.Tensor) -> torch.Tensor:
        if keep.dim() != 2 or keep.shape[1] != input_ids.shape[-1]:
            raise ValueError(
                f"keep must be [n_variants, {input_ids.shape[-1]}], got {tuple(keep.shape)}"
            )
        with torch.no_grad(), eval_mode(adapter.model):
            return torch.cat([run(chunk) for chunk in keep.split(batch_size)])

    return predict


def memoised(predict: Predict) -> Predict:
    """``predict`` running each distinct keep row once: rows seen before come from memory, the
    new ones go to ``predict`` in one call (in first-seen order; ``predict`` may chunk them).
    For the removal curves of several methods on one example, which share rows (the full and
    the empty input, the top tokens the methods agree on); a row's value is the one its first
    batch gave (batches of other sizes may round a float differently).

    Returns ``predict(keep [n_variants, tokens]) -> [n_variants]`` on ``keep``'s device, in the
    wrapped ``predict``'s dtype (an empty ``keep`` gets an empty result without a call).
    """
    seen: dict[bytes, float] = {}
    dtype: list[torch.dtype] = []

    def run(keep: torch.Tensor) -> torch.Tensor:
        if len(keep) == 0:
            return torch.zeros(0, dtype=dtype[0] if dtype else torch.float32, device=keep.device)
        keys = [row.tobytes() for row in keep.detach().bool().cpu().numpy()]
        first: dict[bytes, int] = {}  # each new row's first position
        for i, key in enumerate(keys):
            if key not in seen and key not in first:
                first[key] = i
        if first:
            rows = keep[torch.tensor(list(first.values()), device=keep.device)]
            out = predict(rows)
            if out.shape != (len(rows),):
                raise ValueError(f"predict returned shape {tuple(out.shape)} for {len(rows)} rows")
            dtype[:] = [out.dtype]
            seen.update(zip(first, out.detach().cpu().tolist()))
        return torch.tensor([seen[k] for k in keys], dtype=dtype[0], device=keep.device)

    return run


__all__ = ["OPERATIONS", "make_predict", "memoised", "removed_ids"]
