"""Attribution baselines (IG, saliency, input x gradient, attention, leave-one-out, random,
DIFFMASK wrapper) on a linear toy model and on a tiny random NRMS."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attribution_analysis.methods.attention_method import AttentionMethod
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.explained_model import BinaryLogitModel, ModelOutput
from attribution_analysis.methods.integrated_gradients import IntegratedGradientsMethod
from attribution_analysis.methods.occlusion import LeaveOneOutMethod
from attribution_analysis.methods.random_method import RandomMethod
from attribution_analysis.methods.registry import (
    METHODS,
    TRAINED_DIFFMASK,
    build_method,
    parse_method_list,
)
from tests.helpers_foundation import scores_for_decision, spread_diffmask, tiny_nrms

TITLES = [
    "stocks rally as markets cheer surprise rate cut",
    "new vaccine trial shows promise",
    "local team wins championship game in overtime thriller",
    "storm warning",
]


@pytest.fixture(scope="module")
def setup():
    """Tokenizer, tiny random NRMS (eval), a padded batch and its context."""
    torch.set_num_threads(1)
    tok, model = tiny_nrms()
    enc = tok(TITLES, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    history_mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    context = {
        "history_emb": torch.randn(len(TITLES), 5, model.dim, generator=gen),
        "history_mask": history_mask.bool(),
    }
    return tok, model, enc["input_ids"], enc["attention_mask"], context


def _kwargs(tok, name: str) -> dict:
    kwargs = {"special_token_ids": tok.all_special_ids}
    if name in ("ig", "leave_one_out"):
        kwargs.update(pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id)
    return kwargs


def _diffmask(tok, model) -> DIFFMASK:
    torch.manual_seed(1)
    return DIFFMASK(
        model, special_token_ids=tok.all_special_ids, mask_token_id=tok.mask_token_id
    ).eval()


def _trained(tok, model, name: str) -> dict:
    """What a method built on a trained DIFFMASK needs: the DIFFMASK, and for
    ``diffmask_effect`` the titles that fit its effect head."""
    extra = {"diffmask": _diffmask(tok, model)}
    if name == "diffmask_effect":
        enc = tok(TITLES, padding=True, return_tensors="pt")
        extra["titles"] = [(enc["input_ids"], enc["attention_mask"])]
    return extra


def _all_methods(tok, model) -> dict:
    methods = {n: build_method(n, model, **_kwargs(tok, n)) for n in METHODS if "diffmask" not in n}
    for name in TRAINED_DIFFMASK:
        methods[name] = build_method(name, model, **_trained(tok, model, name))
    return methods


# --------------------------------------------------------------------- linear model
class LinearModel(BinaryLogitModel):
    """Logit = sum over positions and hidden units of W[t, h] * x[t, h] (+ a bias)."""

    name = "linear"

    def __init__(self, vocab: int = 20, tokens: int = 6, hidden: int = 4) -> None:
        gen = torch.Generator().manual_seed(0)
        module = nn.Module()
        module.emb = nn.Embedding(vocab, hidden)
        with torch.no_grad():
            module.emb.weight.copy_(torch.randn(vocab, hidden, generator=gen))
        module.w = nn.Parameter(torch.randn(tokens, hidden, generator=gen))
        super().__init__(module)

    @property
    def hidden_size(self) -> int:
        return self.model.w.shape[1]

    @property
    def num_layers(self) -> int:
        return 0

    def embed(self, input_ids):
        return self.model.emb(input_ids)

    def forward(
        self, word_embeddings, attention_mask, context, output_hidden_states=False, edit=None
    ):
        t = word_embeddings.shape[1]
        return ModelOutput((word_embeddings * self.model.w[:t]).sum((1, 2)) + 0.5)

    def divergence(self, original, masked, context, kind):
        return (original - masked) ** 2


@pytest.mark.parametrize("baseline", ["pad", "mask", "zero"])
def test_ig_of_linear_model_is_input_minus_baseline_times_weight(baseline):
    linear = LinearModel()
    pad, mask, cls, sep = 0, 1, 2, 3
    ids = torch.tensor([[cls, 5, 9, 7, sep, pad], [cls, 11, sep, pad, pad, pad]])
    attention = (ids != pad).long()
    method = IntegratedGradientsMethod(
        linear,
        special_token_ids=[pad, mask, cls, sep],
        pad_token_id=pad,
        mask_token_id=mask,
        baseline=baseline,
        n_steps=7,
    )
    scores, extras = method.attribute(ids, attention, {}, return_extras=True)
    x = linear.embed(ids).detach()
    token = {"pad": pad, "mask": mask}.get(baseline)
    fill = torch.zeros(4) if token is None else linear.embed(torch.tensor(token)).detach()
    scorable = method.scorable(ids, attention)
    expected = ((x - fill) * linear.model.w.detach()).sum(-1) * scorable
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-5)
    assert (scores[~scorable] == 0).all()
    assert extras["completeness_error"].shape == (len(ids),)
    assert extras["completeness_error"].max() < 1e-5
    torch.testing.assert_close(method.attribute(ids, attention, {}), scores)  # scores alone


def test_ig_rejects_missing_token_id():
    with pytest.raises(ValueError, match="pad_token_id"):
        IntegratedGradientsMethod(LinearModel(), baseline="pad")


# --------------------------------------------------------------------- tiny NRMS
def _ig_errors(setup, n_steps: int) -> list[float]:
    tok, model, ids, mask, context = setup
    method = IntegratedGradientsMethod(model, n_steps=n_steps, **_kwargs(tok, "ig"))
    _, extras = method.attribute(ids, mask, context, return_extras=True)
    return extras["completeness_error"].tolist()


def test_ig_completeness_error_small_and_shrinks_with_steps(setup):
    err50 = _ig_errors(setup, 50)
    err2 = _ig_errors(setup, 2)
    assert len(err50) == len(TITLES)
    assert max(err50) < 1e-3
    assert sum(err50) < sum(err2)


def test_ig_explain_records_completeness_error(setup):
    tok, model, ids, mask, context = setup
    method = IntegratedGradientsMethod(model, **_kwargs(tok, "ig"))
    results = method.explain(ids, mask, context, tokenizer=tok)
    assert all(r.metadata["completeness_error"] < 1e-3 for r in results)
    assert results[0].metadata["settings"]["baseline"] == "pad"
    assert results[0].tokens[0] == "[CLS]" and results[0].token_scores[0] == 0.0


@pytest.mark.parametrize(
    "name",
    [
        "ig",
        "saliency",
        "input_x_gradient",
        "attention",
        "leave_one_out",
        "diffmask",
        "diffmask_loo",
        "diffmask_effect",
    ],
)
def test_batched_equals_one_by_one(setup, name):
    tok, model, ids, mask, context = setup
    method = _all_methods(tok, model)[name]
    batched = method.attribute(ids, mask, context)
    for i in range(len(ids)):
        n = int(mask[i].sum())
        ctx = {k: v[i : i + 1] for k, v in context.items()}
        single = method.attribute(ids[i : i + 1, :n], mask[i : i + 1, :n], ctx)[0]
        torch.testing.assert_close(batched[i, :n], single, atol=1e-5, rtol=1e-4)
        assert (batched[i, n:] == 0).all()


def test_leave_one_out_definition_and_chunking(setup):
    tok, model, ids, mask, context = setup
    method = LeaveOneOutMethod(model, **_kwargs(tok, "leave_one_out"))
    scores = method.attribute(ids, mask, context)
    chunked = LeaveOneOutMethod(model, internal_batch_size=5, **_kwargs(tok, "leave_one_out"))
    torch.testing.assert_close(chunked.attribute(ids, mask, context), scores)
    adapter = method.adapter
    ctx = adapter.prepare_context(context)
    with torch.no_grad():
        words = adapter.embed(ids)
        full = adapter.forward(words, mask, ctx).output
        masked = words.clone()
        masked[:, 2] = adapter.embed(torch.tensor([[tok.mask_token_id]]))[0, 0]
        occluded = adapter.forward(masked, mask, ctx).output
    torch.testing.assert_close(scores[:, 2], full - occluded, atol=1e-6, rtol=1e-5)
    assert scores[:, 2].abs().max() > 1e-4  # not trivially zero


def test_padding_and_special_tokens_score_zero(setup):
    tok, model, ids, mask, context = setup
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert (mask == 0).any() and (special & mask.bool()).any()
    for name, method in _all_methods(tok, model).items():
        scores = method.attribute(ids, mask, context)
        assert scores.shape == ids.shape, name
        scorable = method.scorable(ids, mask)
        assert (scores[~scorable] == 0).all(), name
        if name != "random":
            assert scores[scorable].abs().sum() > 0, name


def test_random_method_is_deterministic_for_a_seed(setup):
    tok, model, ids, mask, context = setup
    a = RandomMethod(model, tok.all_special_ids, seed=3).attribute(ids, mask, context)
    b = RandomMethod(model, tok.all_special_ids, seed=3).attribute(ids, mask, context)
    c = RandomMethod(model, tok.all_special_ids, seed=4).attribute(ids, mask, context)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    method = RandomMethod(model, tok.all_special_ids, seed=3)
    method.attribute(ids, mask, context)
    method.reset()
    torch.testing.assert_close(method.attribute(ids, mask, context), a, atol=0, rtol=0)


def test_attention_weights_sum_to_one_over_scorable_tokens(setup):
    tok, model, ids, mask, context = setup
    method = AttentionMethod(model, tok.all_special_ids)
    scores = method.attribute(ids, mask, context)
    torch.testing.assert_close(scores.sum(-1), torch.ones(len(ids)))
    assert (scores >= 0).all()
    assert (scores[~method.scorable(ids, mask)] == 0).all()


def test_diffmask_method_matches_get_attributions(setup):
    tok, model, ids, mask, context = setup
    dm = _diffmask(tok, model)
    method = DiffMaskMethod(model, diffmask=dm)
    expected = dm.get_attributions(ids, mask, **context)
    torch.testing.assert_close(method.attribute(ids, mask, context), expected)
    assert method.word_aggregation == "max"
    assert method.settings()["special_token_ids"] == sorted(tok.all_special_ids)
    assert method.explain(ids, mask, context)[0].metadata["method"] == "diffmask"
    with pytest.raises(ValueError, match="exactly one"):
        DiffMaskMethod(model)


def test_registry_names_and_errors(setup):
    tok, model, *_ = setup
    assert set(METHODS) == {
        "diffmask",
        "diffmask_loo",
        "diffmask_effect",
        "ig",
        "saliency",
        "input_x_gradient",
        "attention",
        "leave_one_out",
        "random",
    }
    for name, cls in METHODS.items():
        if name not in TRAINED_DIFFMASK:
            assert isinstance(build_method(name, model, **_kwargs(tok, name)), cls)
            assert cls.name == name
    with pytest.raises(ValueError) as err:
        build_method("lime", model)
    assert all(name in str(err.value) for name in METHODS)
    assert parse_method_list("diffmask, ig,random,ig") == ["diffmask", "ig", "random"]
    with pytest.raises(ValueError, match="valid names"):
        parse_method_list("ig,shap")


def test_completeness_error_nan_when_no_difference():
    from attribution_analysis.methods.integrated_gradients import relative_completeness_error

    out = relative_completeness_error(torch.tensor([0.1, 0.0]), torch.tensor([0.5, 0.0]))
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1])


def test_registry_names_are_the_class_names_and_methods_take_the_same_ids(setup):
    from attribution_analysis.methods.registry import METHODS, build_method

    tok, model, ids, mask, context = setup
    assert all(cls.name == name for name, cls in METHODS.items())
    common = {
        "special_token_ids": tok.all_special_ids,
        "pad_token_id": tok.pad_token_id,
        "mask_token_id": tok.mask_token_id,
        "seed": 0,
    }
    for name in METHODS:
        extra = _trained(tok, model, name) if name in TRAINED_DIFFMASK else {}
        method = build_method(name, model, **common, **extra)
        scores, extras = method.attribute(ids, mask, context, return_extras=True)
        assert scores.shape == ids.shape and isinstance(extras, dict), name


def test_diffmask_method_refuses_other_token_ids(setup):
    tok, model, *_ = setup
    with pytest.raises(ValueError, match="another tokenizer"):
        DiffMaskMethod(model, diffmask=_diffmask(tok, model), mask_token_id=12345)


# --------------------------------------------------------------------- DIFFMASK + leave-one-out
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_diffmask_loo_is_the_kept_set_ordered_by_the_signed_effect(setup, sign):
    """score = [keep >= 0.5] + e / (1 + |e|) / 2, e = F(x) - F(x, token i -> the baseline), computed
    here position by position; F explains the decision (sign-flipped for a non-click)."""
    tok, model, ids, mask, context = setup
    dm = spread_diffmask(tok, model)
    method = build_method("diffmask_loo", model, diffmask=dm, **_kwargs(tok, "leave_one_out"))
    adapter = method.adapter
    ctx, scores, keep, scorable = scores_for_decision(method, dm, ids, mask, context, sign)
    with torch.no_grad():
        words = adapter.embed(ids)
        full = adapter.explained_logit(adapter.forward(words, mask, ctx).output, ctx)
        expected = torch.zeros_like(scores)
        for i, j in torch.nonzero(scorable).tolist():
            edited = words.clone()
            edited[i, j] = dm.baseline
            out = adapter.explained_logit(adapter.forward(edited, mask, ctx).output, ctx)
            e = float(full[i] - out[i])
            expected[i, j] = float(keep[i, j] >= 0.5) + e / (1 + abs(e)) / 2
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    kept = (keep >= 0.5) & scorable
    dropped = (keep < 0.5) & scorable
    assert kept.any() and dropped.any()  # both parts present: the ordering is tested
    for i in range(len(ids)):
        if kept[i].any() and dropped[i].any():
            assert scores[i][kept[i]].min() > scores[i][dropped[i]].max()
    results = method.explain(ids, mask, context)
    assert results[0].metadata["method"] == "diffmask_loo"
    assert results[0].metadata["settings"]["kept_at"] == 0.5
    decided = adapter.with_decision(ids, mask, adapter.prepare_context(context))
    n = int(mask[0].sum())
    torch.testing.assert_close(
        torch.tensor(results[0].token_scores, dtype=torch.float32),
        method.attribute(ids, mask, decided)[0, :n],
    )


def test_diffmask_loo_refuses_a_diffmask_that_masks_a_hidden_layer(setup):
    tok, model, *_ = setup
    dm = DIFFMASK(model, mask_layer=1, num_probe_layers=2, special_token_ids=tok.all_special_ids,
                  mask_token_id=tok.mask_token_id)  # fmt: skip
    with pytest.raises(ValueError, match="masks the hidden states of layer 1"):
        build_method("diffmask_loo", model, diffmask=dm)


def test_leave_one_out_with_an_embedding_baseline(setup):
    tok, model, ids, mask, context = setup
    hidden = model.news_encoder.hidden_size
    with pytest.raises(ValueError, match=f"baseline_embedding must be \\[hidden={hidden}\\]"):
        LeaveOneOutMethod(model, tok.all_special_ids, baseline_embedding=torch.zeros(hidden + 1))
    zeros = LeaveOneOutMethod(model, tok.all_special_ids, baseline="zero")
    given = LeaveOneOutMethod(model, tok.all_special_ids, baseline_embedding=torch.zeros(hidden))
    assert given.settings()["baseline"] == "embedding"
    torch.testing.assert_close(
        given.attribute(ids, mask, context), zeros.attribute(ids, mask, context)
    )


def test_leave_one_out_with_a_given_vector_equals_the_named_baseline(setup):
    """A given [MASK] word embedding (in float64: cast to the model's dtype) is ``"mask"``."""
    tok, model, ids, mask, context = setup
    named = LeaveOneOutMethod(model, tok.all_special_ids, mask_token_id=tok.mask_token_id)
    vector = named.adapter.embed(torch.tensor([[tok.mask_token_id]]))[0, 0].detach().double()
    given = LeaveOneOutMethod(model, tok.all_special_ids, baseline_embedding=vector)
    expected = named.attribute(ids, mask, context)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(given.attribute(ids, mask, context), expected)


@pytest.mark.parametrize("name", ["leave_one_out", "diffmask_loo"])
def test_a_batch_without_a_scorable_token_scores_zero(setup, name):
    tok, model, *_ = setup
    enc = tok(["", ""], padding=True, return_tensors="pt")
    context = {"history_emb": torch.randn(2, 5, model.dim), "history_mask": torch.ones(2, 5).bool()}
    extra = {"diffmask": _diffmask(tok, model)} if name == "diffmask_loo" else {}
    method = build_method(name, model, **_kwargs(tok, "leave_one_out"), **extra)
    scores = method.attribute(enc["input_ids"], enc["attention_mask"], context)
    assert scores.shape == enc["input_ids"].shape and (scores == 0).all()


def test_diffmask_loo_keeps_the_order_for_large_effects():
    """The squashed effect stays strictly inside (-0.5, 0.5) in float32 where tanh / 2 would
    round to 0.5: a kept opposing token still ranks above a dropped supporting one."""
    effects = torch.tensor([-50.0, -12.0, 12.0, 50.0])
    squashed = effects / (1 + effects.abs()) / 2
    assert (squashed.abs() < 0.5).all() and (squashed.diff() > 0).all()
    assert (torch.tanh(effects) / 2).abs().max() == 0.5  # what the squashing avoids
    assert 1.0 + squashed[0] > 0.0 + squashed[-1]


def test_method_list_refuses_diffmask_loo_for_a_hidden_layer_mask_before_training():
    assert parse_method_list("diffmask,ig", mask_layer=2) == ["diffmask", "ig"]
    assert parse_method_list("diffmask_loo") == ["diffmask_loo"]
    with pytest.raises(ValueError, match="layer 2 .*leave diffmask_loo out"):
        parse_method_list("diffmask, diffmask_loo", mask_layer=2)
