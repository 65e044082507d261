"""The recommender's training forward: ``history_plm_grad=False`` keeps the scores and every
gradient above the language model, and cuts only the language model's gradient through titles
seen in histories alone (checked against an independent formulation)."""

from __future__ import annotations

import pytest
import torch

from attribution_analysis.config import ConfigError, RecommenderConfig, from_dict
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.models import lower_cache as lc
from attribution_analysis.models.click_scorer import ClickScorer, batch_logits
from attribution_analysis.models.history_cache import HistoryVectorCache
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import data_config, make_corpus, tiny_config, tiny_tokenizer

# rows 1-6 are candidates; history holds 4-6 (also candidates) and 7-12 (history only)
BATCH = {
    "candidates": torch.tensor([[1, 2, 3], [4, 5, 6]]),
    "history": torch.tensor([[7, 8, 4, 9], [10, 11, 12, 5]]),
    "history_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool),
    "target": torch.tensor([0, 0]),
}


@pytest.fixture(scope="module", params=[1, 3], ids=["cached-bottom", "all-layers"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    tok = tiny_tokenizer()
    data = load_mind_data(data_config(make_corpus(root / "corpus"), root / "cache"), tok)
    torch.manual_seed(0)
    model = build_nrms(tiny_config(fine_tune_layers=request.param), len(tok)).eval()
    cache = lc.build_lower_cache(model, data.table, 64, "float32")
    return data, model, cache


def _grads(model, data, cache, history_plm_grad: bool):
    model.zero_grad(set_to_none=True)
    logits = ClickScorer(model, history_plm_grad)(BATCH, data.table, cache)
    torch.nn.functional.cross_entropy(logits, BATCH["target"]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _reference_plm_grads(model, data, cache):
    """Every title encoded with gradient; history-only rows detached where histories use them:
    the language model's gradient then flows through candidate titles only."""
    model.zero_grad(set_to_none=True)
    grads = _loss_grads(model, _logits_from(model, data, cache, None))
    return {n: g for n, g in grads.items() if n.startswith("news_encoder.plm")}


def test_history_without_plm_gradient_keeps_scores_and_head_gradients(setup):
    data, model, cache = setup
    use_cache = cache if model.news_encoder.caches_lower_layers else None
    full_logits, full = _grads(model, data, use_cache, True)
    cut_logits, cut = _grads(model, data, use_cache, False)
    torch.testing.assert_close(cut_logits, full_logits, rtol=0, atol=1e-6)
    assert full.keys() == cut.keys()
    plm = [n for n in full if n.startswith("news_encoder.plm")]
    assert plm and len(plm) < len(full)
    for name in full:  # news head, user encoder: the same gradient
        if name not in plm:
            torch.testing.assert_close(cut[name], full[name], rtol=1e-5, atol=1e-7)
    reference = _reference_plm_grads(model, data, use_cache)
    assert reference.keys() == set(plm)
    for name in plm:  # language model: through candidates only
        torch.testing.assert_close(cut[name], reference[name], rtol=1e-5, atol=1e-7)
    changed = [n for n in plm if not torch.allclose(cut[n], full[n], rtol=1e-3, atol=1e-6)]
    assert changed, "history titles' language-model gradient was not cut"


def test_without_gradient_both_settings_agree_exactly(setup):
    data, model, cache = setup
    use_cache = cache if model.news_encoder.caches_lower_layers else None
    with torch.no_grad():
        a = batch_logits(model, BATCH, data.table, use_cache, True)
        b = batch_logits(model, BATCH, data.table, use_cache, False)
    assert torch.equal(a, b)


def test_config_key_is_a_boolean():
    assert (
        from_dict(RecommenderConfig, {"train": {"history_plm_grad": False}}).train.history_plm_grad
        is False
    )
    with pytest.raises(ConfigError, match="history_plm_grad"):
        from_dict(RecommenderConfig, {"train": {"history_plm_grad": "no"}})


# --- the history cache (train.history_cache_steps) --------------------------------------------

HISTORY_ONLY = torch.tensor([7, 8, 9, 10, 11, 12])


def _vectors(model, data, cache, rows: torch.Tensor) -> torch.Tensor:
    """News vectors ``[rows, dim]`` of token-table ``rows``, computed directly."""
    ids, mask = data.table.rows(rows)
    enc = model.news_encoder
    if cache is not None:
        return enc.forward_from_lower(cache[rows][:, : ids.shape[1]], mask)
    return enc(ids, mask).vectors


def _logits_from(model, data, cache, history_only: torch.Tensor | None) -> torch.Tensor:
    """Scores with every candidate encoded with gradient; history-only titles take
    ``history_only [6, dim]`` (rows 7-12 in order), or their detached fresh vectors (None)."""
    cand, hist = BATCH["candidates"], BATCH["history"]
    rows = torch.cat([cand.flatten(), hist.flatten()])
    unique, inverse = torch.unique(rows, return_inverse=True)
    vectors = _vectors(model, data, cache, unique)
    if history_only is None:
        history_only = vectors[torch.searchsorted(unique, HISTORY_ONLY)].detach()
    table = vectors.clone()
    table[torch.searchsorted(unique, HISTORY_ONLY)] = history_only
    cand_vec = vectors[inverse[: cand.numel()]].view(*cand.shape, -1)
    hist_vec = table[inverse[cand.numel() :]].view(*hist.shape, -1)
    user = model.user_vector(hist_vec, BATCH["history_mask"])
    return model.score(user, cand_vec)


def _loss_grads(model, logits) -> dict[str, torch.Tensor]:
    torch.nn.functional.cross_entropy(logits, BATCH["target"]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_history_cache_of_age_one_detaches_history_only_titles(setup):
    """Vectors recomputed every step: the same scores; the gradient is that of the scores with
    history-only vectors detached (the news encoder learns from candidates only)."""
    data, model, cache = setup
    use_cache = cache if model.news_encoder.caches_lower_layers else None
    model.zero_grad(set_to_none=True)
    history = HistoryVectorCache(len(data.table), max_age=1)
    logits = ClickScorer(model, False, history)(BATCH, data.table, use_cache)
    got = _loss_grads(model, logits)
    reference = _logits_from(model, data, use_cache, None)
    want = _loss_grads(model, reference)
    torch.testing.assert_close(logits.detach(), reference.detach(), rtol=0, atol=1e-6)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    _, without = _grads(model, data, use_cache, False)
    head = [n for n in without if n.startswith("news_encoder.") and "plm" not in n]
    assert head and any(not torch.allclose(got[n], without[n]) for n in head), (
        "the news head still learns from history-only titles"
    )
    assert history.computed == len(HISTORY_ONLY)


def test_history_cache_serves_vectors_until_they_are_max_age_steps_old(setup):
    data, model, cache = setup
    use_cache = cache if model.news_encoder.caches_lower_layers else None
    history = HistoryVectorCache(len(data.table), max_age=2)
    scorer = ClickScorer(model, False, history)
    with torch.no_grad():
        old = _vectors(model, data, use_cache, HISTORY_ONLY)
    scorer(BATCH, data.table, use_cache)
    assert history.computed == len(HISTORY_ONLY)
    original = model.news_encoder.proj.weight.detach().clone()
    try:
        with torch.no_grad():
            weight = model.news_encoder.proj.weight  # an optimizer step on the news head
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)))
        history.advance()  # step 1: the step-0 vectors are 1 step old, still served
        stale = scorer(BATCH, data.table, use_cache)
        assert history.computed == len(HISTORY_ONLY)
        torch.testing.assert_close(
            stale, _logits_from(model, data, use_cache, old), atol=1e-6, rtol=0
        )
        fresh = _logits_from(model, data, use_cache, None)
        assert not torch.allclose(stale, fresh, atol=1e-4), "the update did not change the scores"
        history.advance()  # step 2: 2 steps old, computed again
        again = scorer(BATCH, data.table, use_cache)
        assert history.computed == 2 * len(HISTORY_ONLY)
        # the perturbed head gives logits of about 0.5; a batch without padding runs the
        # unmasked attention kernel, which sums in another order (a few 1e-6 in float32)
        torch.testing.assert_close(again, fresh, atol=1e-5, rtol=0)
        history.clear()  # a new epoch: nothing is reused
        scorer(BATCH, data.table, use_cache)
        assert history.computed == 3 * len(HISTORY_ONLY)
        with torch.no_grad():  # outside training the cache is not used
            plain = batch_logits(model, BATCH, data.table, use_cache, False)
            cached = scorer(BATCH, data.table, use_cache)
        assert torch.equal(plain, cached) and history.computed == 3 * len(HISTORY_ONLY)
    finally:
        with torch.no_grad():
            model.news_encoder.proj.weight.copy_(original)
        model.zero_grad(set_to_none=True)


def test_history_cache_is_refused_with_history_gradient(setup):
    data, model, cache = setup
    use_cache = cache if model.news_encoder.caches_lower_layers else None
    with pytest.raises(ValueError, match="history_plm_grad"):
        batch_logits(model, BATCH, data.table, use_cache, True, HistoryVectorCache(20, 2))
    with pytest.raises(ValueError, match="max_age"):
        HistoryVectorCache(20, 0)


def test_news_table_encoded_in_length_order_matches_each_title_alone(setup):
    """``encode_news_table`` batches titles by length; every row's vector is that of the
    title encoded on its own (no padding at all), in the table's row order."""
    data, model, _ = setup
    vectors = encode_news_table(model, data.table, batch_size=5)
    lengths = data.table.attention_mask.sum(-1)
    assert len(torch.unique(lengths)) >= 3
    with torch.no_grad():
        for row in range(len(data.table)):
            n = int(lengths[row])
            ids = data.table.input_ids[row : row + 1, :n]
            alone = model.news_encoder(ids, torch.ones_like(ids)).vectors[0]
            torch.testing.assert_close(vectors[row], alone, rtol=0, atol=1e-5)
