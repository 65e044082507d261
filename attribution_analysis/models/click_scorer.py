"""The training forward of the recommender as one module, so that ``accelerate`` can wrap it
(``DistributedDataParallel`` synchronises gradients only through the wrapped module's
``forward``)."""

from __future__ import annotations

import torch
from torch import nn

from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.models.history_cache import HistoryVectorCache
from attribution_analysis.models.nrms import NRMS


def batch_logits(
    model: NRMS,
    batch: dict[str, torch.Tensor],
    table: TokenTable,
    lower_cache: torch.Tensor | None,
    history_plm_grad: bool = True,
    history_cache: HistoryVectorCache | None = None,
) -> torch.Tensor:
    """Scores ``[batch, 1 + K]``; each distinct news item of the batch is encoded once.

    ``batch``: ``candidates [batch, 1 + K]`` and ``history [batch, history]`` token-table rows,
    ``history_mask [batch, history]``; ``lower_cache``: :func:`~.lower_cache.build_lower_cache`
    (any device or precision; its rows are moved to the model's device and dtype) or ``None``.
    ``history_plm_grad=False``: titles seen only in histories go through the language model
    without gradient (its layers learn from the candidates; the news encoder's head, the user
    encoder and everything above still learn from every title); in training this saves most of
    the backward pass, since histories hold about 6 of every 7 titles of a batch.
    ``history_cache`` (only while gradients are enabled; needs ``history_plm_grad=False``):
    those titles' news vectors come from the cache, without gradient, and are recomputed only
    when older than its ``max_age`` steps (:mod:`.history_cache`).
    """
    device = next(model.parameters()).device
    cand, hist = batch["candidates"], batch["history"]
    if history_cache is not None and torch.is_grad_enabled():
        if history_plm_grad:
            raise ValueError("a history cache needs history_plm_grad=False")
        return _logits_with_cache(model, batch, table, lower_cache, history_cache)
    rows = torch.cat([cand.flatten().cpu(), hist.flatten().cpu()])
    unique, inverse = torch.unique(rows, return_inverse=True)
    with_grad = None
    if not history_plm_grad and torch.is_grad_enabled():
        with_grad = torch.isin(unique, cand.flatten().cpu()).to(device)
    vectors = _encode_rows(model, unique, table, lower_cache, with_grad)
    inverse = inverse.to(device)
    cand_vec = vectors[inverse[: cand.numel()]].view(*cand.shape, -1)
    hist_vec = vectors[inverse[cand.numel() :]].view(*hist.shape, -1)
    user = model.user_vector(hist_vec, batch["history_mask"].to(device))
    return model.score(user, cand_vec)


def _logits_with_cache(
    model: NRMS,
    batch: dict[str, torch.Tensor],
    table: TokenTable,
    lower_cache: torch.Tensor | None,
    cache: HistoryVectorCache,
) -> torch.Tensor:
    """:func:`batch_logits` with history-only titles' vectors from ``cache``: candidates are
    encoded with gradient, every other history title comes from the cache."""
    device = next(model.parameters()).device
    cand, hist = batch["candidates"].cpu(), batch["history"].cpu()
    cand_rows, cand_inverse = torch.unique(cand.flatten(), return_inverse=True)
    cand_vectors = _encode_rows(model, cand_rows, table, lower_cache, None)  # [rows, dim]
    flat = hist.flatten()
    live = torch.isin(flat, cand_rows)  # history titles that are also candidates
    old_rows = torch.unique(flat[~live])
    if len(old_rows):
        old_vectors = cache.get(
            old_rows, lambda rows: _encode_rows(model, rows, table, lower_cache, None)
        ).to(device=device, dtype=cand_vectors.dtype)
    else:
        old_vectors = cand_vectors.new_zeros(0, cand_vectors.shape[-1])
    # each history slot indexes [candidate vectors; cached vectors]
    index = torch.where(
        live,
        torch.searchsorted(cand_rows, flat),
        len(cand_rows) + torch.searchsorted(old_rows, flat),
    )
    hist_vec = torch.cat([cand_vectors, old_vectors])[index.to(device)]
    cand_vec = cand_vectors[cand_inverse.to(device)].view(*cand.shape, -1)
    user = model.user_vector(hist_vec.view(*hist.shape, -1), batch["history_mask"].to(device))
    return model.score(user, cand_vec)


def _encode_rows(
    model: NRMS,
    rows: torch.Tensor,
    table: TokenTable,
    lower_cache: torch.Tensor | None,
    plm_grad: torch.Tensor | None,
) -> torch.Tensor:
    """News vectors ``[rows, dim]`` of token-table ``rows``; the language model runs without
    gradient where ``plm_grad [rows]`` (bool) is False (``None``: everywhere with gradient)."""
    param = next(model.parameters())
    encoder = model.news_encoder
    ids, mask = table.rows(rows)
    ids, mask = ids.to(param.device), mask.to(param.device)
    if lower_cache is not None:
        states = lower_cache[rows.to(lower_cache.device)][:, : ids.shape[1]]
        states = states.to(device=param.device, dtype=param.dtype)
        start = encoder.frozen_layers
    else:
        states, start = None, 0

    def plm(sel: torch.Tensor | None = None) -> torch.Tensor:
        """The language model's top output for the rows ``sel`` selects (``None``: all, no
        copy)."""
        m = mask if sel is None else mask[sel]
        if states is not None:
            x = states if sel is None else states[sel]
            return encoder.run_layers(x, m, start, encoder.num_layers)
        return encoder.plm_states(encoder.embed_words(ids if sel is None else ids[sel]), m)[-1]

    if plm_grad is None or bool(plm_grad.all()):
        top = plm()
    else:
        with torch.no_grad():
            fixed = plm(~plm_grad)  # [rows without gradient, tokens, hidden]
        learning = plm(plm_grad)  # [rows with gradient, tokens, hidden]
        top = learning.new_empty(len(rows), *learning.shape[1:]).detach()
        top[~plm_grad] = fixed.to(top.dtype)
        top = top.index_put((plm_grad,), learning)
    return encoder.pool_tokens(top, mask)[0]


class ClickScorer(nn.Module):
    """``forward(batch, table, lower_cache)`` -> scores ``[batch, 1 + K]`` of an NRMS."""

    def __init__(
        self,
        model: NRMS,
        history_plm_grad: bool = True,
        history_cache: HistoryVectorCache | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.history_plm_grad = history_plm_grad
        self.history_cache = history_cache

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        table: TokenTable,
        lower_cache: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return batch_logits(
            self.model, batch, table, lower_cache, self.history_plm_grad, self.history_cache
        )
