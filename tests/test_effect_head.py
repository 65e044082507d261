"""``diffmask_effect``: the effect head's targets are exact leave-one-out effects, its fit is a
ridge regression, and the method's scores follow the closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.diffmask_effect_method import DiffMaskEffectMethod
from attribution_analysis.methods.diffmask.effect_head import (
    RIDGE_GRID,
    EffectHead,
    exact_effect_vectors,
    fit_effect_head,
    length_sorted,
    token_features,
)
from attribution_analysis.methods.occlusion import LeaveOneOutMethod
from attribution_analysis.methods.registry import build_method, parse_method_list
from tests.helpers_foundation import scores_for_decision, spread_diffmask, tiny_nrms

TITLES = [
    "stocks rally as markets cheer surprise rate cut",
    "new vaccine trial shows promise",
    "local team wins championship game in overtime thriller",
    "storm warning",
    "city council approves new budget for schools",
    "actor reveals secret of his long career",
]


@pytest.fixture(scope="module")
def setup():
    """Tokenizer, tiny random NRMS, a DIFFMASK with spread keep probabilities, a batch and its
    context (one thread inside the module, for bit-identical reruns; restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok, model = tiny_nrms()
    dm = spread_diffmask(tok, model)
    gen = torch.Generator().manual_seed(8)
    enc = tok(TITLES, padding=True, return_tensors="pt")
    context = {
        "history_emb": torch.randn(len(TITLES), 5, model.dim, generator=gen),
        "history_mask": torch.ones(len(TITLES), 5, dtype=torch.bool),
    }
    yield tok, model, dm, enc["input_ids"], enc["attention_mask"], context
    torch.set_num_threads(threads)


def _titles(ids, mask, size=2):
    return [(ids[i : i + size], mask[i : i + size]) for i in range(0, len(ids), size)]


def test_effect_vectors_give_the_exact_leave_one_out_effects(setup):
    """u . dv_i is the leave-one-out effect on the click score with DIFFMASK's baseline (NRMS's
    score is linear in the news vector), measured here by leave-one-out itself."""
    tok, model, dm, ids, mask, context = setup
    loo = LeaveOneOutMethod(model, tok.all_special_ids, baseline_embedding=dm.baseline.detach())
    expected = loo.attribute(ids, mask, context)
    adapter = loo.adapter
    scorable = loo.scorable(ids, mask)
    dv, pooled = exact_effect_vectors(adapter, adapter.embed(ids), mask, scorable, dm.baseline)
    user = adapter.context_vector(adapter.prepare_context(context))
    effects = torch.einsum("btd,bd->bt", dv, user)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(effects, expected, atol=1e-5, rtol=1e-4)
    assert (dv[~scorable] == 0).all()
    features = token_features(pooled)
    layers = model.news_encoder.num_layers + 1
    hidden = model.news_encoder.hidden_size
    upper = layers - layers // 2
    assert features.shape == (*ids.shape, (layers + upper) * hidden + model.dim + 1)


def test_fit_is_the_ridge_solution_on_standardised_features():
    """Against numpy's closed form at the chosen penalty; a noiseless linear target is
    recovered."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 1.0])
    w = torch.randn(6, 3, generator=gen)
    y = x @ w + 0.5
    groups = torch.arange(400) // 4  # 100 "titles" of 4 tokens
    head = EffectHead.fit(x, y, groups, grid=(1e-6, 10.0, 1e4))
    assert float(head.ridge) == pytest.approx(1e-6)  # the least held-out error
    torch.testing.assert_close(head(x), y, atol=1e-3, rtol=1e-3)
    assert torch.isnan(head.fit_spearman)  # chosen by squared error
    users = torch.randn(20, 3, generator=gen)
    ranked = EffectHead.fit(x, y, groups, users=users, grid=(1e6, 1e-6))
    assert float(ranked.ridge) == pytest.approx(1e-6)  # orders every held-out title exactly
    assert float(ranked.fit_spearman) == pytest.approx(1.0)
    noisy = y + torch.randn(y.shape, generator=gen)
    head = EffectHead.fit(x, noisy, groups, grid=(30.0,))
    xn = x.double().numpy()
    z = (xn - xn.mean(0)) / xn.std(0, ddof=1)
    yn = noisy.double().numpy()
    beta = np.linalg.solve(z.T @ z + 30.0 * np.eye(6), z.T @ (yn - yn.mean(0)))
    np.testing.assert_allclose(head(x).double().numpy(), z @ beta + yn.mean(0), atol=1e-4)


def _numpy_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on standardised features (sample sd), constant features dropped: ``(beta, keep)``."""
    sd = x.std(0, ddof=1)
    keep = sd > 1e-6
    z = (x[:, keep] - x[:, keep].mean(0)) / sd[keep]
    eye = np.eye(int(keep.sum()))
    return np.linalg.solve(z.T @ z + lam * eye, z.T @ (y - y.mean(0))), keep


def test_fit_handles_offset_and_constant_features_and_both_solvers_agree(monkeypatch):
    """Features far from zero (as hidden states with large means) and a constant one: the fit
    equals numpy's closed form on the non-constant features, the constant one gets weight 0;
    the statistics of the held-out part plus the rest equal those of all rows; the penalty
    grid's eigenvalue route, the refit's Cholesky solve and its fallback give the same
    weights; the result does not depend on the point the statistics are taken about; a
    penalty <= 0 is refused."""
    from attribution_analysis.methods.diffmask.effect_head import _Moments, _Ridge

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=gen) * torch.tensor([0.5, 2.0, 1.0, 0.1, 1.0])
    x = x + torch.tensor([40.0, -25.0, 3.0, 100.0, 0.0])
    x[:, 4] = 7.0  # constant
    y = x[:, :4] @ torch.randn(4, 2, generator=gen) + torch.randn(300, 2, generator=gen)
    head = EffectHead.fit(x, y, torch.arange(300) // 3, grid=(5.0,))
    beta, keep = _numpy_ridge(x.double().numpy(), y.double().numpy(), 5.0)
    assert keep.tolist() == [True, True, True, True, False]
    assert float(head.weight[4].abs().max()) == 0.0
    xk = x.double().numpy()[:, keep]
    expected = (xk - xk.mean(0)) / xk.std(0, ddof=1) @ beta + y.double().numpy().mean(0)
    np.testing.assert_allclose(head(x).double().numpy(), expected, rtol=1e-5, atol=1e-4)
    shift = x.double().mean(0)
    part = torch.arange(300) % 7 == 0
    summed = _Moments(x[part], y[part], shift) + _Moments(x[~part], y[~part], shift)
    whole = _Moments(x, y, shift)
    for name in ("s", "xx", "y_sum", "xy"):
        torch.testing.assert_close(getattr(summed, name), getattr(whole, name))
    cholesky, eigen = _Ridge(summed), _Ridge(summed, eigen=True)
    torch.testing.assert_close(cholesky.weights(5.0), eigen.weights(5.0))
    torch.testing.assert_close(cholesky.weights(5.0)[:4], torch.from_numpy(beta))
    with monkeypatch.context() as patch:  # a failed factorisation falls back to eigenvalues
        patch.setattr(torch.linalg, "cholesky_ex", lambda a: (a, torch.tensor(1)))
        torch.testing.assert_close(_Ridge(summed).weights(5.0), eigen.weights(5.0))
    with pytest.raises(ValueError, match="penalties must be positive"):
        EffectHead.fit(x, y, torch.arange(300) // 3, grid=(0.0, 1.0))
    for other in (torch.zeros(5, dtype=torch.float64), x[0].double() + 1.0):  # any shift
        ridge = _Ridge(_Moments(x[~part], y[~part], other), eigen=True)
        b, _ = _numpy_ridge(x[~part].double().numpy(), y[~part].double().numpy(), 5.0)
        torch.testing.assert_close(ridge.weights(5.0)[:4], torch.from_numpy(b))
        torch.testing.assert_close(ridge.mean, x[~part].double().mean(0))
        torch.testing.assert_close(ridge.bias, y[~part].double().mean(0))


def test_ranking_without_rankable_titles_falls_back_to_the_squared_error():
    """Titles of two tokens cannot be ranked (a Spearman correlation needs 3): the penalty is
    the least held-out squared error, as without users, and no ranking score is recorded."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    y = x @ torch.randn(4, 3, generator=gen) + 0.1 * torch.randn(200, 3, generator=gen)
    groups = torch.arange(200) // 2
    users = torch.randn(5, 3, generator=gen)
    plain = EffectHead.fit(x, y, groups, grid=(1e-3, 1e4))
    ranked = EffectHead.fit(x, y, groups, users=users, grid=(1e-3, 1e4))
    assert float(ranked.ridge) == float(plain.ridge) == pytest.approx(1e-3)
    assert torch.isnan(ranked.fit_spearman)
    with pytest.raises(ValueError, match="at least three scorable tokens"):
        EffectHead.fit(x[:2], y[:2], groups[:2])


def test_fit_is_deterministic_in_eval_mode_and_needs_titles(setup):
    """The same head twice, and the same from a model left in train mode (dropout off while
    fitting, the model's mode restored)."""
    tok, model, dm, ids, mask, _ = setup
    method = LeaveOneOutMethod(model, tok.all_special_ids, baseline="zero")
    args = (method.adapter, dm.baseline.detach(), _titles(ids, mask), method.scorable)
    a, b = fit_effect_head(*args), fit_effect_head(*args)
    model.train()
    try:
        c = fit_effect_head(*args)
        assert model.training
    finally:
        model.eval()
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[name], equal_nan=True)
        torch.testing.assert_close(value, c.state_dict()[name], equal_nan=True)
    with pytest.raises(ValueError, match="needs titles"):
        fit_effect_head(method.adapter, dm.baseline.detach(), [], method.scorable)


def test_length_sorted_batches_hold_every_title_once_with_little_padding(setup):
    """Re-batched shortest first, as many titles a batch as given, each batch cut after its
    last attended position; every title's ids and mask are the given ones."""
    _, _, _, ids, mask, _ = setup
    given = _titles(ids, mask, size=4)
    batches = length_sorted(given)
    assert [len(i) for i, _, _ in batches] == [4, 2]
    index = torch.cat([k for _, _, k in batches])
    assert sorted(index.tolist()) == list(range(len(ids)))
    lengths = [m.sum(-1) for _, m, _ in batches]
    assert torch.cat(lengths).tolist() == sorted(mask.sum(-1).tolist())
    for (i, m, k), length in zip(batches, lengths):
        assert m.shape[1] == int(length.max())  # no all-padding column
        torch.testing.assert_close(i, ids[k, : m.shape[1]])
        torch.testing.assert_close(m, mask[k, : m.shape[1]])
        assert not mask[k, m.shape[1] :].any()


def test_fit_gets_the_rows_of_the_given_title_order(setup, monkeypatch):
    """fit_effect_head computes on length-sorted batches but hands the ridge fit every token's
    features, targets and title index in the given order: those of batch-by-batch passes
    (batches of other widths, given as an iterator)."""
    tok, model, dm, ids, mask, _ = setup
    method = LeaveOneOutMethod(model, tok.all_special_ids, baseline="zero")
    baseline = dm.baseline.detach()
    cuts = [(0, 2), (2, 5), (5, 6)]  # batches of 2, 3 and 1 titles, each cut to its width
    widths = [int(mask[a:b].sum(-1).max()) for a, b in cuts]
    given = [(ids[a:b, :w], mask[a:b, :w]) for (a, b), w in zip(cuts, widths)]
    assert len({i.shape[1] for i, _ in given}) > 1  # batches of other widths: re-padded
    feats, targets, groups, offset = [], [], [], 0
    for i, m in given:  # the straightforward order: batch by batch, title by title
        scorable = method.scorable(i, m)
        dv, original = exact_effect_vectors(method.adapter, method.adapter.embed(i), m,
                                            scorable, baseline)  # fmt: skip
        feats.append(token_features(original)[scorable])
        targets.append(dv[scorable])
        rows = torch.arange(len(i))[:, None].expand_as(scorable)
        groups.append(rows[scorable] + offset)
        offset += len(i)
    captured = {}

    def capture(features, targets_, groups_, users=None, seed=0):
        captured.update(features=features, targets=targets_, groups=groups_)
        return "head"

    monkeypatch.setattr(EffectHead, "fit", staticmethod(capture))
    assert fit_effect_head(method.adapter, baseline, iter(given), method.scorable) == "head"
    assert torch.equal(captured["groups"], torch.cat(groups))
    torch.testing.assert_close(captured["features"], torch.cat(feats), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured["targets"], torch.cat(targets), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_scores_are_the_kept_set_ordered_by_the_head_estimate(setup, sign):
    """score = [keep >= 0.5] + s e / (1 + |s e|) / 2, e = u . head(features), s the decision."""
    tok, model, dm, ids, mask, context = setup
    method = build_method(
        "diffmask_effect", model, diffmask=dm, titles=_titles(ids, mask),
        special_token_ids=tok.all_special_ids,
    )  # fmt: skip
    adapter = method.adapter
    ctx, scores, keep, scorable = scores_for_decision(method, dm, ids, mask, context, sign)
    with torch.no_grad():
        pooled = adapter.pooled(adapter.embed(ids), mask)
        e = sign * torch.einsum("btd,bd->bt", method.effect_head(token_features(pooled)),
                                ctx["user"])  # fmt: skip
        shared = dm.get_attributions(ids, mask, hidden_states=pooled.hidden_states, **ctx)
    torch.testing.assert_close(shared, keep)  # the probe may read a pass already run
    expected = ((keep >= 0.5).float() + e / (1 + e.abs()) / 2) * scorable
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    kept, dropped = (keep >= 0.5) & scorable, (keep < 0.5) & scorable
    assert kept.any() and dropped.any() and (e[scorable].abs() > 1e-4).any()
    decided = adapter.with_decision(ids, mask, adapter.prepare_context(context))
    torch.testing.assert_close(method.attribute(ids, mask, context),
                               method.attribute(ids, mask, decided))  # fmt: skip
    results = method.explain(ids, mask, context)
    assert results[0].metadata["method"] == "diffmask_effect"
    assert results[0].metadata["settings"]["effect_head_ridge"] in RIDGE_GRID
    assert results[0].metadata["settings"]["readout"] == "keep_probability"


def test_a_fitted_head_is_reused_and_bad_setups_are_refused(setup):
    tok, model, dm, ids, mask, context = setup
    fitted = DiffMaskEffectMethod(model, diffmask=dm, titles=_titles(ids, mask))
    reused = DiffMaskEffectMethod(model, diffmask=dm, effect_head=fitted.effect_head)
    torch.testing.assert_close(reused.attribute(ids, mask, context),
                               fitted.attribute(ids, mask, context))  # fmt: skip
    with pytest.raises(ValueError, match="exactly one of effect_head"):
        DiffMaskEffectMethod(model, diffmask=dm)
    saved = dm.baseline.detach().clone()
    try:
        with torch.no_grad():
            dm.baseline.add_(0.01)  # as if DIFFMASK had trained on
        with pytest.raises(RuntimeError, match="baseline changed .*build diffmask_effect again"):
            fitted.attribute(ids, mask, context)
    finally:
        with torch.no_grad():
            dm.baseline.copy_(saved)
    ids_ = {"special_token_ids": tok.all_special_ids, "mask_token_id": tok.mask_token_id}
    hidden = DIFFMASK(model, mask_layer=1, num_probe_layers=2, **ids_)
    with pytest.raises(ValueError, match="layer 1 .*leave diffmask_effect out"):
        DiffMaskEffectMethod(model, diffmask=hidden, titles=_titles(ids, mask))
    with pytest.raises(ValueError, match="layer 2 .*leave diffmask_effect out"):
        parse_method_list("diffmask, diffmask_effect", mask_layer=2)


def test_a_model_without_a_linear_readout_is_refused():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    classifier = BertForSequenceClassification(config).eval()
    dm = DIFFMASK(classifier, special_token_ids=[0], mask_token_id=1)
    ids = torch.randint(2, 50, (2, 5))
    with pytest.raises(ValueError, match="linear in a pooled representation"):
        DiffMaskEffectMethod(classifier, diffmask=dm, titles=[(ids, torch.ones_like(ids))])
