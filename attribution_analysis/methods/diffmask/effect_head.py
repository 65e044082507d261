"""An amortised estimate of each token's leave-one-out effect under DIFFMASK's baseline.

For a model whose explained logit is linear in a pooled representation (NRMS:
``score = u . v``, ``u`` the user vector, ``v`` the news vector of the title), the
leave-one-out effect of token ``i`` with DIFFMASK's baseline ``b`` as the replacement factors
exactly into a user part and a title part:

    e_i = u . (v(x) - v(x with token i -> b)) = u . dv_i

``dv_i`` ``[dim]`` depends on the title alone, so it can be learned from titles without any
user or label: the :class:`EffectHead` is a ridge regression from features of the original
forward pass (hidden states, pooling weights, pooled vector) to ``dv_i``, fitted on the exact
``dv_i`` of training titles (:func:`fit_effect_head`; one forward pass per title token, once),
its penalty chosen by how well ``u . dv_hat`` orders held-out titles for sample users (user
vectors; without them, by the held-out squared error).
At attribution time ``u . head(features)`` costs one forward pass and a matrix product, like
DIFFMASK's own probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from attribution_analysis.methods.explained_model import ExplainedModel, ModelOutput
from attribution_analysis.utils.modes import eval_mode

RIDGE_GRID = (1.0, 10.0, 100.0, 1e3, 1e4, 3e4, 1e5)
"""Ridge penalties tried (on standardised features), each judged on a held-out tenth of the
fitting titles (:meth:`EffectHead.fit`); the chosen one refits on all of them."""


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
    original pass's :meth:`ExplainedModel.pooled` output. One pass per scorable position, the
    model in eval mode (no dropout)."""
    with eval_mode(adapter.model):
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
            changed = adapter.pooled(words, attention_mask[rows]).output.float()
            dv[rows, t] = vectors[rows] - changed
    return dv, original


class EffectHead(nn.Module):
    """``dv_hat = ((features - mean) / scale) @ weight + bias`` (module docstring).

    Buffers: ``mean [features]``, ``scale [features]``, ``weight [features, dim]``,
    ``bias [dim]`` (the targets' mean: the penalty does not shrink it), ``ridge`` (the chosen
    penalty), ``fit_spearman`` (the held-out ranking score at that penalty; nan when the
    penalty was chosen by squared error).
    """

    def __init__(self, n_features: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_features, dim))
        self.register_buffer("bias", torch.zeros(dim))
        self.register_buffer("ridge", torch.tensor(0.0))
        self.register_buffer("fit_spearman", torch.tensor(float("nan")))

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
        ``features [n, features]``, each feature standardised; solved in float64.

        ``groups [n]``: the title of each row (an index >= 0). A seeded tenth of the titles
        is held out to pick the penalty from ``grid``, then the head is refitted on every
        row. With ``users
        [m, dim]`` (readout vectors, e.g. user vectors) the penalty that orders each held-out
        title's tokens best is chosen: the mean Spearman correlation between ``u . dv_hat``
        and ``u . dv`` over the held-out titles, each with :data:`USERS_PER_TITLE` users drawn
        with ``seed`` (the order is what the method uses; measured on the news benchmark, the
        squared error favours a penalty about 300 times smaller that orders worse). Without
        users, or when no held-out title has the 3 scorable tokens a ranking needs, the least
        squared error.
        """
        if len(features) < 3:
            raise ValueError("fitting the effect head needs at least three scorable tokens")
        if min(grid) <= 0:
            raise ValueError(f"ridge penalties must be positive, got {tuple(grid)}")
        gen = torch.Generator().manual_seed(seed)
        titles = torch.unique(groups)
        held = titles[torch.randperm(len(titles), generator=gen)[: max(1, len(titles) // 10)]]
        val = torch.isin(groups, held)
        if int(val.sum()) in (0, len(val)) or int((~val).sum()) < 2:
            val = torch.zeros_like(val)
            val[::10] = True
        picks = None
        if users is not None:
            n_groups = int(groups.max()) + 1
            picks = torch.randint(len(users), (n_groups, USERS_PER_TITLE), generator=gen)
        shift = features.sum(0, dtype=torch.float64) / len(features)
        held_out = _Moments(features[val], targets[val], shift)
        fitting = _Moments(features[~val], targets[~val], shift)
        train = _Ridge(fitting)  # one Cholesky solve a penalty (7 of them: faster than eigh)
        z_val, y_val = train.standardise(features[val]), targets[val]  # standardised once
        by_error, by_rank = [], []  # (score, penalty), higher is better
        for lam in grid:
            pred = z_val @ train.weights(lam) + train.bias
            by_error.append((-float(((pred - y_val.double()) ** 2).sum(-1).mean()), lam))
            if users is not None:
                by_rank.append((_ranking_score(pred, y_val, groups[val], users, picks), lam))
        ranked = any(score > float("-inf") for score, _ in by_rank)
        score, lam = max(by_rank if ranked else by_error, key=lambda pair: pair[0])
        del train
        full = _Ridge(fitting + held_out)
        head = cls(features.shape[1], targets.shape[1])
        head.mean.copy_(full.mean)
        head.scale.copy_(full.scale)
        head.weight.copy_(full.weights(lam).float())
        head.bias.copy_(full.bias.float())
        head.ridge.fill_(lam)
        head.fit_spearman.fill_(score if ranked else float("nan"))
        return head


USERS_PER_TITLE = 4
"""Readout vectors drawn per held-out title when the ridge penalty is chosen by ranking."""


class _Moments:
    """Sufficient statistics (float64) of a ridge regression of ``y [n, dim]`` on ``x [n,
    features]``, about a fixed ``shift [features]`` (a mean of the data: no cancellation):
    ``n``, ``s = sum(x - shift)``, ``xx = sum (x - shift)(x - shift)^T``, ``y_sum``, ``xy =
    sum (x - shift) y^T``. Statistics of disjoint rows about the same shift add up (``+``), so
    the held-out part and the rest give the whole data's without a second pass over it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, shift: torch.Tensor) -> None:
        xs, yd = x.double() - shift, y.double()
        self.shift, self.n = shift, len(x)
        self.s, self.xx = xs.sum(0), xs.T @ xs
        self.y_sum, self.xy = yd.sum(0), xs.T @ yd

    def __add__(self, other: _Moments) -> _Moments:
        total = object.__new__(_Moments)
        total.shift, total.n = self.shift, self.n + other.n
        for name in ("s", "xx", "y_sum", "xy"):
            setattr(total, name, getattr(self, name) + getattr(other, name))
        return total


class _Ridge:
    """Ridge regression on standardised features from :class:`_Moments`: with ``Z`` the
    features standardised by their mean and sample sd, ``W(lam) = (Z^T Z + lam I)^{-1} Z^T (Y -
    mean(Y))``. Each penalty is one Cholesky solve (for the 4,625 features of the news
    encoder, 7 of them take about 0.6 of the time of one eigendecomposition); ``eigen=True``
    decomposes ``Z^T Z = Q diag(e) Q^T`` once instead, so that every penalty costs a matrix
    product (also the fallback where a factorisation fails). A feature of zero variance gets
    weight 0."""

    def __init__(self, m: _Moments, eigen: bool = False) -> None:
        offset = m.s / m.n  # mean - shift
        self.mean = m.shift + offset
        centred = m.xx - torch.outer(m.s, offset)  # sum (x - mean)(x - mean)^T
        var = centred.diagonal() / max(m.n - 1, 1)
        self.scale = var.clamp_min(0).sqrt().clamp_min(1e-6)
        self.bias = m.y_sum / m.n
        inv = torch.where(var > 1e-12, 1 / self.scale, torch.zeros_like(var))
        self.gram = centred * torch.outer(inv, inv)  # Z^T Z
        self.zy = (m.xy - torch.outer(m.s, self.bias)) * inv[:, None]  # Z^T (Y - mean(Y))
        self.eig: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if eigen:
            self._decompose()

    def _decompose(self) -> None:
        values, vectors = torch.linalg.eigh(self.gram)
        self.eig = (values.clamp_min(0), vectors, vectors.T @ self.zy)

    def weights(self, lam: float) -> torch.Tensor:
        if self.eig is None:
            eye = torch.eye(len(self.gram), dtype=self.gram.dtype)
            factor, info = torch.linalg.cholesky_ex(self.gram + lam * eye)
            if int(info) == 0:
                return torch.cholesky_solve(self.zy, factor)
            self._decompose()
        values, vectors, projected = self.eig
        return vectors @ (projected / (values + lam)[:, None])

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``x [n, features]`` standardised by the fit's mean and sd (float64)."""
        return (x.double() - self.mean) / self.scale


def _ranking_score(
    pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, users: torch.Tensor, picks
) -> float:
    """Mean Spearman correlation, over (title, user) pairs, of ``u . pred`` against
    ``u . target`` across the title's rows (titles of fewer than 3 rows and constant sides
    skipped); ``picks [titles, k]``: the user indices of each title (``groups`` >= 0)."""
    rs = []
    for title in torch.unique(groups):
        rows = torch.nonzero(groups == title).flatten()
        if len(rows) < 3:
            continue
        u = users[picks[int(title)]].double().T  # [dim, k]
        p, y = pred[rows] @ u, target[rows].double() @ u  # [tokens, k]
        for k in range(u.shape[1]):
            if float(p[:, k].std()) > 0 and float(y[:, k].std()) > 0:
                rs.append(float(spearmanr(p[:, k].numpy(), y[:, k].numpy())[0]))
    return sum(rs) / len(rs) if rs else float("-inf")


@torch.no_grad()
def fit_effect_head(
    adapter: ExplainedModel,
    baseline: torch.Tensor,
    titles: Iterable[tuple[torch.Tensor, torch.Tensor]],
    scorable_fn,
    users: torch.Tensor | None = None,
    seed: int = 0,
    quiet: bool = True,
) -> EffectHead:
    """Fit an :class:`EffectHead` on the exact ``dv`` of ``titles`` (the model in eval mode:
    :func:`exact_effect_vectors` runs every pass).

    Args:
        adapter: the explained model (needs :attr:`ExplainedModel.linear_readout`).
        baseline: ``[hidden]``, DIFFMASK's learned word-embedding baseline.
        titles: batches ``(input_ids [batch, tokens], attention_mask [batch, tokens])``.
        scorable_fn: ``(input_ids, attention_mask) -> bool [batch, tokens]``, the tokens an
            attribution scores (no padding or special tokens).
        users: ``[m, dim]`` readout vectors weighing the held-out error (:meth:`EffectHead.fit`).
    """
    check_linear_readout(adapter)
    titles = list(titles)
    if not titles:
        raise ValueError("fitting the effect head needs titles")
    device = next(adapter.model.parameters()).device
    feats, targets, groups = [], [], []
    batches = length_sorted(titles)
    for input_ids, attention_mask, index in tqdm(
        batches, desc="effect head", disable=quiet, leave=False
    ):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        scorable = scorable_fn(input_ids, attention_mask)
        words = adapter.embed(input_ids)
        dv, original = exact_effect_vectors(adapter, words, attention_mask, scorable, baseline)
        feats.append(token_features(original)[scorable].float().cpu())
        targets.append(dv[scorable].cpu())
        scorable = scorable.cpu()
        groups.append(index.cpu()[:, None].expand_as(scorable)[scorable])
    groups = torch.cat(groups)
    order = torch.sort(groups, stable=True).indices  # back to the given title order
    features, targets = torch.cat(feats)[order], torch.cat(targets)[order]
    return EffectHead.fit(features, targets, groups[order], users, seed=seed)


def length_sorted(
    titles: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``titles`` (batches ``(input_ids, attention_mask)``, each ``[batch, tokens]``) re-batched
    by length, shortest first (ties in the given order), as many titles a batch as the first
    given batch, each batch cut after its last attended position: the fit's one pass per
    title token then runs on little padding (on the news corpus's 2,700 fitting titles, 8-14
    tokens long, 0.83 of the work of the given batches). Returns ``(input_ids, attention_mask,
    index)`` per batch, ``index [batch]`` each title's position in the given order."""
    width = max(ids.shape[1] for ids, _ in titles)
    ids = torch.cat([nn.functional.pad(i, (0, width - i.shape[1])) for i, _ in titles])
    mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for _, m in titles])
    order = torch.sort(mask.sum(-1), stable=True).indices
    out = []
    for index in order.split(max(len(titles[0][0]), 1)):
        end = int(mask[index].any(0).nonzero().max()) + 1 if mask[index].any() else 1
        out.append((ids[index, :end], mask[index, :end], index))
    return out


__all__ = [
    "EffectHead",
    "check_linear_readout",
    "exact_effect_vectors",
    "fit_effect_head",
    "length_sorted",
    "token_features",
]
