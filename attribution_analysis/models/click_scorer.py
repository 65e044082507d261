"""The training forward of the recommender as one module, so that ``accelerate`` can wrap it
(``DistributedDataParallel`` synchronises gradients only through the wrapped module's
``forward``)."""

from __future__ import annotations

import torch
from torch import nn

from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.models.nrms import NRMS


def batch_logits(
    model: NRMS,
    batch: dict[str, torch.Tensor],
    table: TokenTable,
    lower_cache: torch.Tensor | None,
    history_plm_grad: bool = True,
) -> torch.Tensor:
    """Scores ``[batch, 1 + K]``; each distinct news item of the batch is encoded once.

    ``batch``: ``candidates [batch, 1 + K]`` and ``history [batch, history]`` token-table rows,
    ``history_mask [batch, history]``; ``lower_cache``: :func:`~.lower_cache.build_lower_cache`
    (any device or precision; its rows are moved to the model's device and dtype) or ``None``.
    ``history_plm_grad=False``: titles seen only in histories go through the language model
    without gradient (its layers learn from the candidates; the news encoder's head, the user
    encoder and everything above still learn from every title); in training this saves most of
    the backward pass, since histories hold about 6 of every 7 titles of a batch.
    """
    device = next(model.parameters()).device
    cand, hist = batch["candidates"], batch["history"]
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

    def __init__(self, model: NRMS, history_plm_grad: bool = True) -> None:
        super().__init__()
        self.model = model
        self.history_plm_grad = history_plm_grad

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        table: TokenTable,
        lower_cache: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return batch_logits(self.model, batch, table, lower_cache, self.history_plm_grad)
