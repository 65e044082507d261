"""Batched inference with a trained recommender: every news item is encoded once per evaluation
and its vector reused across all impressions that show it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attribution_analysis.data.datasets import ImpressionSet, collate_impressions
from attribution_analysis.data.mind import Impression
from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.models.nrms import NRMS
from attribution_analysis.utils.distributed import gather_rows
from attribution_analysis.utils.modes import eval_mode


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_news_table(
    model: NRMS, table: TokenTable, batch_size: int = 256, quiet: bool = True, accelerator=None
) -> torch.Tensor:
    """News vectors of every row of ``table``: ``[num_rows, dim]`` (on the model's device);
    with several processes each encodes a contiguous share and all get the whole table.
    Titles are batched in order of length, so a batch carries little padding."""
    device = _model_device(model)

    def encode(start: int, end: int) -> torch.Tensor:
        out = torch.zeros(end - start, model.dim, device=device)
        lengths = table.attention_mask[start:end].sum(-1)
        order = torch.argsort(lengths, stable=True) + start  # [rows], shortest first
        bar = tqdm(total=end - start, desc="encode news", disable=quiet, leave=False, unit="news")
        with eval_mode(model):
            for rows in order.split(batch_size):
                ids, mask = table.rows(rows)
                vectors = model.news_encoder(ids.to(device), mask.to(device)).vectors
                out[(rows - start).to(device)] = vectors.float()
                bar.update(len(rows))
        bar.close()
        return out

    return gather_rows(accelerator, len(table), encode)


@torch.no_grad()
def user_vectors(
    model: NRMS, news_vectors: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
) -> torch.Tensor:
    """User vectors ``[batch, dim]`` from history rows ``[batch, history]`` and their mask."""
    device = news_vectors.device
    return model.user_vector(news_vectors[history.to(device)], history_mask.to(device))


@torch.no_grad()
def score_impressions(
    model: NRMS,
    impressions: Sequence[Impression],
    table: TokenTable,
    max_history: int = 50,
    batch_size: int = 256,
    news_vectors: torch.Tensor | None = None,
    quiet: bool = True,
    accelerator=None,
) -> list[np.ndarray]:
    """Click scores of every candidate of every impression (in the impression's order);
    ``accelerator`` shares the encoding of the news table across processes (the impressions
    are this process's own)."""
    if news_vectors is None:
        news_vectors = encode_news_table(model, table, batch_size, quiet, accelerator)
    loader = DataLoader(
        ImpressionSet(impressions, table, max_history),
        batch_size=batch_size,
        collate_fn=collate_impressions,
    )
    scores: list[np.ndarray] = []
    with eval_mode(model):
        for batch in tqdm(loader, desc="score impressions", disable=quiet, leave=False):
            user = user_vectors(model, news_vectors, batch["history"], batch["history_mask"])
            cand = news_vectors[batch["candidates"].to(news_vectors.device)]
            s = model.score(user, cand).cpu().numpy()
            n = batch["candidate_mask"].sum(-1).tolist()
            scores.extend(s[i, : n[i]].astype(np.float64) for i in range(len(n)))
    return scores
