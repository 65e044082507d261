"""Token-removal operations for the faithfulness metrics, and the model-randomisation sanity
check, on a tiny random NRMS."""

from __future__ import annotations

import math

import pytest
import torch

from attribution_analysis.evaluation.faithfulness import comprehensiveness_sufficiency
from attribution_analysis.evaluation.removal import (
    OPERATIONS,
    make_predict,
    memoised,
    removed_ids,
)
from attribution_analysis.evaluation.sanity import randomize_top_layers, sanity_check, spearman
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.integrated_gradients import IntegratedGradientsMethod
from tests.helpers_foundation import tiny_nrms

TITLES = [
    "stocks rally as markets cheer surprise rate cut",
    "new vaccine trial shows promise",
    "local team wins championship game in overtime thriller",
    "storm warning issued for the coast",
    "senate passes budget bill after long debate",
    "actor reveals secret to lasting marriage",
    "ten recipes for a quick weeknight dinner",
    "scientists find water on distant planet",
]


@pytest.fixture(scope="module")
def setup():
    """Tokenizer, tiny random NRMS (eval) and one batch dict as a loader yields it."""
    torch.set_num_threads(1)
    tok, model = tiny_nrms()
    enc = tok(TITLES, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "history_emb": torch.randn(len(TITLES), 5, model.dim, generator=gen),
        "history_mask": torch.ones(len(TITLES), 5, dtype=torch.bool),
        "meta": [{} for _ in TITLES],
    }
    return tok, model, batch


def _example(setup, i: int = 1):
    """Example i with its padding kept (title 1 is shorter than the longest)."""
    tok, model, batch = setup
    ids, mask = batch["input_ids"][i], batch["attention_mask"][i]
    context = {
        "history_emb": batch["history_emb"][i : i + 1],
        "history_mask": batch["history_mask"][i : i + 1],
    }
    return tok, model, ids, mask, context


def _predict(setup, operation: str, i: int = 1, **kwargs):
    tok, model, ids, mask, context = _example(setup, i)
    from attribution_analysis.methods.explained_model import make_adapter

    adapter = make_adapter(model)
    if operation == "baseline" and "baseline_embedding" not in kwargs:
        kwargs["baseline_embedding"] = adapter.embed(torch.tensor([tok.mask_token_id])).detach()[0]
    return make_predict(
        adapter, ids, mask, context, operation, tok.mask_token_id, tok.pad_token_id, **kwargs
    )


def _original_probability(setup, i: int = 1) -> torch.Tensor:
    tok, model, batch = setup
    with torch.no_grad():
        user = model.user_vector(batch["history_emb"], batch["history_mask"])
        vectors = model.news_encoder(batch["input_ids"], batch["attention_mask"]).vectors
    return torch.sigmoid(model.score(user, vectors))[i]


def _keep(mask: torch.Tensor, removed: list[int]) -> torch.Tensor:
    keep = torch.ones(1, len(mask), dtype=torch.bool)
    keep[0, removed] = False
    return keep


def test_mask_and_pad_replace_ids_and_keep_attention(setup):
    tok, _, ids, mask, _ = _example(setup)
    assert (mask == 0).any()  # the example has padding
    keep = _keep(mask, [2, 4])
    for op, token in (("mask", tok.mask_token_id), ("pad", tok.pad_token_id)):
        new_ids, new_mask = removed_ids(ids, mask, keep, op, tok.mask_token_id, tok.pad_token_id)
        assert new_ids.shape == (1, len(ids))
        assert new_ids[0, 2] == token and new_ids[0, 4] == token
        others = torch.ones(len(ids), dtype=torch.bool)
        others[[2, 4]] = False
        assert torch.equal(new_ids[0, others], ids[others])
        assert torch.equal(new_mask[0], mask)


def test_delete_drops_tokens_and_shrinks_attention(setup):
    tok, _, ids, mask, _ = _example(setup)
    n = int(mask.sum())
    new_ids, new_mask = removed_ids(
        ids, mask, _keep(mask, [2, 4]), "delete", None, tok.pad_token_id
    )
    assert int(new_mask.sum()) == n - 2
    kept = [t for j, t in enumerate(ids[:n].tolist()) if j not in (2, 4)]
    assert new_ids[0, : n - 2].tolist() == kept
    assert (new_ids[0, n - 2 :] == tok.pad_token_id).all()
    assert (new_mask[0, n - 2 :] == 0).all()


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_keeping_everything_reproduces_the_original_output(setup, operation):
    _, _, ids, _, _ = _example(setup)
    predict = _predict(setup, operation)
    p = predict(torch.ones(2, len(ids), dtype=torch.bool))
    torch.testing.assert_close(p, _original_probability(setup).expand(2), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_removal_changes_output_and_chunking_is_invisible(setup, operation):
    _, _, ids, mask, _ = _example(setup)
    keep = torch.ones(5, len(ids), dtype=torch.bool)
    for row, pos in enumerate([1, 2, 3, 4]):
        keep[row + 1, pos] = False
    p = _predict(setup, operation)(keep)
    assert p.shape == (5,)
    assert (p[1:] - p[0]).abs().max() > 1e-5
    torch.testing.assert_close(_predict(setup, operation, batch_size=2)(keep), p)


def test_memoised_predict_runs_each_distinct_row_once_with_the_same_values(setup):
    """Repeated rows, within a call and across calls, reach the model once (new rows in
    first-seen order); every value is the plain predict's; bad shapes and empty calls pass."""
    _, _, ids, _, _ = _example(setup)
    plain = _predict(setup, "mask")
    seen_rows: list[torch.Tensor] = []

    def counting(keep: torch.Tensor) -> torch.Tensor:
        seen_rows.append(keep.clone())
        return plain(keep)

    keep = torch.ones(6, len(ids), dtype=torch.bool)
    keep[1, 1] = keep[2, 2] = keep[4, 1] = False  # rows 3 and 5 repeat row 0, row 4 row 1
    keep[5] = keep[0]
    predict = memoised(counting)
    p = predict(keep)
    assert p.dtype == plain(keep).dtype and p.shape == (6,)
    torch.testing.assert_close(p, plain(keep), atol=1e-6, rtol=1e-5)
    assert len(seen_rows) == 1 and torch.equal(seen_rows[0], keep[[0, 1, 2]])
    more = torch.ones(3, len(ids), dtype=torch.bool)
    more[1, 3] = more[2, 1] = False  # only row 1 is new
    torch.testing.assert_close(predict(more), plain(more), atol=1e-6, rtol=1e-5)
    assert len(seen_rows) == 2 and torch.equal(seen_rows[1], more[[1]])
    assert predict(more[:0]).shape == (0,)
    with pytest.raises(ValueError, match="predict returned shape"):
        memoised(lambda k: torch.zeros(len(k) + 1))(keep)


def test_learned_baseline_equal_to_mask_embedding_matches_mask_operation(setup):
    _, _, ids, mask, _ = _example(setup)
    keep = torch.ones(3, len(ids), dtype=torch.bool)
    keep[1, 2] = False
    keep[2, [1, 3]] = False
    torch.testing.assert_close(
        _predict(setup, "baseline")(keep), _predict(setup, "mask")(keep), atol=1e-6, rtol=1e-5
    )


def test_delete_output_equals_shorter_title(setup):
    tok, model, ids, mask, context = _example(setup)
    n = int(mask.sum())
    p = _predict(setup, "delete")(_keep(mask, [3]))
    short = torch.cat([ids[:3], ids[4:n]])[None]
    with torch.no_grad():
        user = model.user_vector(context["history_emb"], context["history_mask"])
        vec = model.news_encoder(short, torch.ones_like(short)).vectors
    torch.testing.assert_close(p, torch.sigmoid(model.score(user, vec)), atol=1e-6, rtol=1e-5)


def test_invalid_operation_and_missing_ids(setup):
    with pytest.raises(ValueError, match="operation must be one of"):
        _predict(setup, "shuffle")
    _, model, ids, mask, context = _example(setup)
    with pytest.raises(ValueError, match="baseline_embedding"):
        make_predict(model, ids, mask, context, "baseline")
    with pytest.raises(ValueError, match="mask_token_id"):
        make_predict(model, ids, mask, context, "mask")


def test_predict_plugs_into_faithfulness_metrics(setup):
    tok, _, ids, mask, _ = _example(setup)
    scorable = mask.bool() & ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    scores = torch.arange(len(ids), dtype=torch.float)
    result = comprehensiveness_sufficiency(_predict(setup, "mask"), scores, scorable)
    assert result["p_full"] == pytest.approx(float(_original_probability(setup)), abs=1e-6)
    assert all(math.isfinite(v) for v in result["comprehensiveness"])


# --------------------------------------------------------------------- sanity check
class PositionMethod(AttributionMethod):
    """Ignores the model: the score is the position index."""

    name = "position"

    def _attribute(self, input_ids, attention_mask, context):
        positions = torch.arange(input_ids.shape[1], dtype=torch.float)
        return positions.expand(input_ids.shape) * self.scorable(input_ids, attention_mask)


def test_randomize_top_layers_copies_and_is_seeded(setup):
    _, model, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = randomize_top_layers(model, 1, seed=0)
    b = randomize_top_layers(model, 1, seed=0)
    c = randomize_top_layers(model, 1, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # original untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    top = "news_encoder.plm.encoder.layer.1.attention.self.query.weight"
    bottom = "news_encoder.plm.encoder.layer.0.attention.self.query.weight"
    for key in (
        top,
        "news_encoder.pool.query.weight",
        "news_encoder.mhsa.in_proj_weight",
        "news_encoder.mhsa.out_proj.weight",
        "news_encoder.proj.weight",
    ):
        assert not torch.equal(sa[key], before[key]), key
        assert not torch.equal(sa[key], sc[key]), key
    assert torch.equal(sa[bottom], before[bottom])
    assert torch.equal(
        sa["user_encoder.pool.query.weight"], before["user_encoder.pool.query.weight"]
    )
    with pytest.raises(ValueError, match="n_layers"):
        randomize_top_layers(model, 3)


def test_sanity_check_separates_model_dependent_and_constant_methods(setup):
    tok, model, batch = setup
    special = tok.all_special_ids

    def ig(m):
        return IntegratedGradientsMethod(m, special, pad_token_id=tok.pad_token_id, n_steps=20)

    dependent = sanity_check(ig, model, [batch], seed=0)
    constant = sanity_check(lambda m: PositionMethod(m, special), model, [batch], seed=0)
    assert dependent["n_examples"] == constant["n_examples"] == len(TITLES)
    assert constant["spearman_mean"] == pytest.approx(1.0)
    assert dependent["spearman_mean"] < 0.5
    assert dependent["method"] == "ig" and dependent["n_layers"] == 2


def test_spearman_is_nan_safe():
    import numpy as np

    assert math.isnan(spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
