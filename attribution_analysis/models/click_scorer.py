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
) -> torch.Tensor:
    """Scores ``[batch, 1 + K]``; each distinct news item of the batch is encoded once.

    ``batch``: ``candidates [batch, 1 + K]`` and ``history [batch, history]`` token-table rows,
    ``history_mask [batch, history]``; ``lower_cache``: :func:`~.lower_cache.build_lower_cache`
    (any device or precision; its rows are moved to the model's device and dtype) or ``None``.
    """
    param = next(model.parameters())
    device = param.device
    cand, hist = batch["candidates"], batch["history"]
    rows = torch.cat([cand.flatten().cpu(), hist.flatten().cpu()])
    unique, inverse = torch.unique(rows, return_inverse=True)
    ids, mask = table.rows(unique)
    ids, mask = ids.to(device), mask.to(device)
    if lower_cache is not None:
        lower = lower_cache[unique.to(lower_cache.device)][:, : ids.shape[1]]
        lower = lower.to(device=device, dtype=param.dtype)
        vectors = model.news_encoder.forward_from_lower(lower, mask)
    else:
        vectors = model.news_encoder(ids, mask).vectors
    inverse = inverse.to(device)
    cand_vec = vectors[inverse[: cand.numel()]].view(*cand.shape, -1)
    hist_vec = vectors[inverse[cand.numel() :]].view(*hist.shape, -1)
    user = model.user_vector(hist_vec, batch["history_mask"].to(device))
    return model.score(user, cand_vec)


class ClickScorer(nn.Module):
    """``forward(batch, table, lower_cache)`` -> scores ``[batch, 1 + K]`` of an NRMS."""

    def __init__(self, model: NRMS) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        table: TokenTable,
        lower_cache: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return batch_logits(self.model, batch, table, lower_cache)
