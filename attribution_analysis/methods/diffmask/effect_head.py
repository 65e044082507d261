"""An amortised estimate of each token's leave-one-out effect under DIFFMASK's baseline.

For a model whose explained logit is linear in a pooled representation (NRMS:
``score = u . v``, ``u`` the user vector, ``v`` the news vector of the title), the
leave-one-out effect of token ``i`` with DIFFMASK's baseline ``b`` as the replacement factors
exactly into a user part and a title part:

    e_i = u . (v(x) - v(x with token i -> b)) = u . dv_i

``dv_i`` ``[dim]`` depends on the title alone, so it can be learned from titles without any
user or label: the :class:`EffectHead` is a ridge regression from features of the original
forward pass (hidden states, pooling weights, pooled vector) to ``dv_i``, fitted on the exact
``dv_i`` of training titles (:func:`fit_effect_head`; one forward pass per title token, once).
At attribution time ``u . head(features)`` costs one forward pass and a matrix product, like
DIFFMASK's own probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from attribution_analysis.methods.explained_model import ExplainedModel, ModelOutput

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge penalties tried (on standardised features); the one with the least squared error on a
held-out tenth of the fitting titles is used to refit on all of them."""


def token_features(pooled: ModelOutput) -> torch.Tensor:
    """Per-token features ``[batch, tokens, features]`` of one forward pass.

    ``pooled``: :meth:`ExplainedModel.pooled`'s output, ``output [batch, dim]`` (the pooled
    vector ``v``), ``hidden_states`` (embedding output + every layer ``[batch, tokens,
    hidden]``) and ``token_weights`` ``a [batch, tokens]``. Features: every hidden state
    ``h_l``, ``a * h_l`` for the upper half of the layers, ``a * v`` and ``a``
    (``features = (L + 1 + ceil((L + 1) / 2)) * hidden + dim + 1``).
    """
    states = pooled.hidden_states
    weights = pooled.token_weights[..., None].to(states[0].dtype)  # [batch, tokens, 1]
    upper = states[len(states) // 2 :]
    vector = pooled.output[:, None].to(states[0].dtype).expand(-1, weights.shape[1], -1)
    return torch.cat([*states, *(weights * h for h in upper), weights * vector, weights], dim=-1)


def check_linear_readout(adapter: ExplainedModel) -> None:
    """Refuse a model whose explained logit is not linear in a pooled representation."""
    if not adapter.linear_readout:
        raise ValueError(
            f"the effect head needs a model whose explained logit is linear in a pooled "
            f"representation (NRMS: user . news vector); {adapter.name} has none"
        )


@torch.no_grad()
def exact_effect_vectors(
    adapter: ExplainedModel,
    word_embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    scorable: torch.Tensor,
    baseline: torch.Tensor,
) -> tuple[torch.Tensor, ModelOutput]:
    """``dv [batch, tokens, dim]``: the pooled vector minus the pooled vector with the token's
    word embedding replaced by ``baseline [hidden]`` (0 where not ``scorable``); also the
    original pass's :meth:`ExplainedModel.pooled` output. One pass per scorable position."""
    original = adapter.pooled(word_embeddings, attention_mask)
    vectors = original.output.float()
    batch, tokens = scorable.shape
    dv = torch.zeros(batch, tokens, vectors.shape[-1], device=vectors.device)
    fill = baseline.to(word_embeddings.device, word_embeddings.dtype)
    for t in range(tokens):
        rows = scorable[:, t]
        if not rows.any():
            continue
        words = word_embeddings[rows].clone()
        words[:, t] = fill
        dv[rows, t] = vectors[rows] - adapter.pooled(words, attention_mask[rows]).output.float()
    return dv, original


class EffectHead(nn.Module):
    """``dv_hat = ((features - mean) / scale) @ weight + bias`` (module docstring).

    Buffers: ``mean [features]``, ``scale [features]``, ``weight [features, dim]``,
    ``bias [dim]`` (the targets' mean: the penalty does not shrink it),
    ``ridge`` (the chosen penalty), ``fit_r2`` (share of the held-out variance of ``u . dv``
    explained, under the fitting users' second moment, at the chosen penalty).
    """

    def __init__(self, n_features: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_features, dim))
        self.register_buffer("bias", torch.zeros(dim))
        self.register_buffer("ridge", torch.tensor(0.0))
        self.register_buffer("fit_r2", torch.tensor(float("nan")))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[..., features]`` -> ``[..., dim]``."""
        z = (features.float() - self.mean) / self.scale
        return z @ self.weight + self.bias

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        targets: torch.Tensor,
        groups: torch.Tensor,
        users: torch.Tensor | None = None,
        grid: Sequence[float] = RIDGE_GRID,
        seed: int = 0,
    ) -> EffectHead:
        """Ridge regression (with an unpenalised intercept) of ``targets [n, dim]`` on
        ``features [n, features]``, each feature standardised.

        ``groups [n]``: the title of each row; a seeded tenth of the titles is held out to pick
        the penalty from ``grid``, then the head is refitted on every row. ``users [m, dim]``
        (optional): readout vectors whose second moment ``S`` weighs the held-out error
        ``(dv_hat - dv)^T S (dv_hat - dv)``, the expected squared error of ``u . dv`` (plain
        squared error without). Solved in float64.
        """
        if len(features) < 2:
            raise ValueError("fitting the effect head needs at least two scorable tokens")
        titles = torch.unique(groups)
        gen = torch.Generator().manual_seed(seed)
        held = titles[torch.randperm(len(titles), generator=gen)[: max(1, len(titles) // 10)]]
        val = torch.isin(groups, held)
        if val.all() or not val.any():
            val = torch.zeros_like(val)
            val[::10] = True
        s = torch.eye(targets.shape[1], dtype=torch.float64)
        if users is not None:
            u = users.double()
            s = u.T @ u / len(u)

        def solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple:
            mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
            z = ((x - mean) / scale).double()
            bias = y.double().mean(0)
            a = z.T @ z + lam * torch.eye(z.shape[1], dtype=torch.float64)
            return mean, scale, torch.linalg.solve(a, z.T @ (y.double() - bias)), bias

        def weighted(d: torch.Tensor) -> float:
            return float(((d @ s) * d).sum(-1).mean())

        best = None
        for lam in grid:
            mean, scale, w, bias = solve(features[~val], targets[~val], lam)
            pred = ((features[val] - mean) / scale).double() @ w + bias
            err = weighted(pred - targets[val].double())
            if best is None or err < best[0]:
                best = (err, lam)
        err, lam = best
        total = weighted(targets[val].double() - targets[val].double().mean(0))
        head = cls(features.shape[1], targets.shape[1])
        mean, scale, w, bias = solve(features, targets, lam)
        head.mean.copy_(mean)
        head.scale.copy_(scale)
        head.weight.copy_(w.float())
        head.bias.copy_(bias.float())
        head.ridge.fill_(lam)
        head.fit_r2.fill_(1.0 - err / total if total > 0 else float("nan"))
        return head


@torch.no_grad()
def fit_effect_head(
    adapter: ExplainedModel,
    baseline: torch.Tensor,
    titles: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scorable_fn,
    users: torch.Tensor | None = None,
    seed: int = 0,
    quiet: bool = True,
) -> EffectHead:
    """Fit an :class:`EffectHead` on the exact ``dv`` of ``titles``.

    Args:
        adapter: the explained model (needs :attr:`ExplainedModel.linear_readout`).
        baseline: ``[hidden]``, DIFFMASK's learned word-embedding baseline.
        titles: batches ``(input_ids [batch, tokens], attention_mask [batch, tokens])``.
        scorable_fn: ``(input_ids, attention_mask) -> bool [batch, tokens]``, the tokens an
            attribution scores (no padding or special tokens).
        users: ``[m, dim]`` readout vectors weighing the held-out error (:meth:`EffectHead.fit`).
    """
    check_linear_readout(adapter)
    device = next(adapter.model.parameters()).device
    feats, targets, groups = [], [], []
    offset = 0
    for input_ids, attention_mask in tqdm(titles, desc="effect head", disable=quiet, leave=False):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        scorable = scorable_fn(input_ids, attention_mask)
        words = adapter.embed(input_ids)
        dv, original = exact_effect_vectors(adapter, words, attention_mask, scorable, baseline)
        feats.append(token_features(original)[scorable].float().cpu())
        targets.append(dv[scorable].cpu())
        scorable = scorable.cpu()
        rows = torch.arange(len(input_ids))[:, None].expand_as(scorable)
        groups.append(rows[scorable] + offset)
        offset += len(input_ids)
    if not feats:
        raise ValueError("fitting the effect head needs titles")
    return EffectHead.fit(torch.cat(feats), torch.cat(targets), torch.cat(groups), users, seed=seed)


__all__ = [
    "EffectHead",
    "check_linear_readout",
    "exact_effect_vectors",
    "fit_effect_head",
    "token_features",
]
