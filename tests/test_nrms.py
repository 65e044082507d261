"""Tests of the NRMS recommender with a pretrained-language-model news encoder."""

from __future__ import annotations

import pytest
import torch

from attribution_analysis.config import ModelConfig
from attribution_analysis.models.nrms import NRMS, AdditiveAttention, NewsEncoder
from attribution_analysis.models.pretrained import load_tokenizer
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import single_thread, tiny_config, tiny_tokenizer

TITLES = [
    "stocks fall as investors fear a recession",
    "the coach praised the striker after the game",
    "vaccine",
    "new vaccine trial for cancer patients begins today in the hospital",
    "album release",
]
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer) -> NRMS:
    return build_nrms(tiny_config(), len(tokenizer)).eval()


def encode(tokenizer, titles, max_length=None):
    if max_length is None:
        enc = tokenizer(titles, padding="longest", return_tensors="pt")
    else:
        enc = tokenizer(titles, padding="max_length", max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def test_manual_layer_loop_equals_hf_forward(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    ours = model.news_encoder(ids, mask, output_hidden_states=True).hidden_states
    ref = model.news_encoder.plm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(ours) == len(ref.hidden_states) == model.news_encoder.num_layers + 1
    for k, (a, b) in enumerate(zip(ours, ref.hidden_states)):
        assert torch.allclose(a, b, atol=ATOL), f"hidden state {k} differs"


@torch.no_grad()
def test_manual_layer_loop_equals_hf_forward_embedded_minilm() -> None:
    """The shipped MiniLM (sdpa attention, 6 layers) through the same loop."""
    config = ModelConfig(num_heads=2, head_dim=8, query_dim=16)
    tok = load_tokenizer(config)
    model = build_nrms(config, len(tok)).eval()
    ids, mask = encode(tok, TITLES[:3])
    ours = model.news_encoder(ids, mask, output_hidden_states=True).hidden_states
    ref = model.news_encoder.plm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(ours) == 7
    for k, (a, b) in enumerate(zip(ours, ref.hidden_states)):
        keep = mask.bool()
        assert torch.allclose(a[keep], b[keep], atol=1e-4), f"hidden state {k} differs"


@torch.no_grad()
def test_news_vectors_shape_and_token_weights(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    out = model.news_encoder(ids, mask)
    assert out.vectors.shape == (len(TITLES), model.dim) == (5, 16)
    assert out.hidden_states is None
    assert torch.all(out.token_weights[mask == 0] == 0)
    assert torch.allclose(out.token_weights.sum(-1), torch.ones(len(TITLES)), atol=ATOL)


@torch.no_grad()
def test_title_padding_invariance(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    ids_long, mask_long = encode(tokenizer, TITLES, max_length=40)
    assert ids_long.shape[1] > ids.shape[1]
    short = model.news_encoder(ids, mask).vectors
    long = model.news_encoder(ids_long, mask_long).vectors
    assert (short - long).abs().max() <= ATOL
    # the padded positions' token ids do not matter either
    garbage = ids_long.masked_fill(mask_long == 0, 1037)
    assert (model.news_encoder(garbage, mask_long).vectors - short).abs().max() <= ATOL


@torch.no_grad()
def test_history_padding_invariance_of_scores(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    news = model.news_encoder(ids, mask).vectors  # [5, dim]
    history = news[None, [0, 1, 2]].repeat(2, 1, 1)
    history_mask = torch.tensor([[True, True, True], [True, True, False]])
    candidates = news[None, [3, 4]].repeat(2, 1, 1)
    scores = model.score(model.user_vector(history, history_mask), candidates)
    padded = torch.cat([history, torch.randn(2, 4, model.dim) * 10], 1)
    padded_mask = torch.cat([history_mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    padded_scores = model.score(model.user_vector(padded, padded_mask), candidates)
    assert (scores - padded_scores).abs().max() <= ATOL
    # the second user equals a one-example batch with only its two real slots
    alone = model.user_vector(history[1:, :2], history_mask[1:, :2])
    assert (alone - model.user_vector(history, history_mask)[1:]).abs().max() <= ATOL


@torch.no_grad()
def test_batch_independence_news_encoder(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    batch = model.news_encoder(ids, mask).vectors
    for i, title in enumerate(TITLES):
        one_ids, one_mask = encode(tokenizer, [title])
        alone = model.news_encoder(one_ids, one_mask).vectors[0]
        assert (alone - batch[i]).abs().max() <= ATOL, title


@torch.no_grad()
def test_batch_independence_user_encoder(model) -> None:
    torch.manual_seed(1)
    history = torch.randn(4, 6, model.dim)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]
    ).bool()
    batch = model.user_vector(history, mask)
    for i in range(4):
        alone = model.user_vector(history[i : i + 1], mask[i : i + 1])
        assert (alone[0] - batch[i]).abs().max() <= ATOL
    # changing another user's history changes nothing for user 0
    other = history.clone()
    other[1:] = torch.randn(3, 6, model.dim)
    assert (model.user_vector(other, mask)[0] - batch[0]).abs().max() <= ATOL


@torch.no_grad()
def test_empty_history_gives_learned_empty_user(tokenizer) -> None:
    model = build_nrms(tiny_config(), len(tokenizer)).eval()
    model.user_encoder.empty_user.copy_(torch.arange(model.dim, dtype=torch.float) / 10)
    history = torch.randn(3, 4, model.dim)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    users = model.user_vector(history, mask)
    assert torch.isfinite(users).all()
    assert torch.equal(users[0], model.user_encoder.empty_user)
    assert torch.equal(users[2], model.user_encoder.empty_user)
    assert not torch.equal(users[1], model.user_encoder.empty_user)


def test_empty_history_no_nan_in_gradients(tokenizer) -> None:
    model = build_nrms(tiny_config(dropout=0.0), len(tokenizer)).train()
    history = torch.randn(2, 3, model.dim, requires_grad=True)
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]]).bool()
    users = model.user_vector(history, mask)
    users.sum().backward()
    assert torch.isfinite(history.grad).all()
    assert model.user_encoder.empty_user.grad is not None
    assert all(
        torch.isfinite(p.grad).all() for p in model.user_encoder.parameters() if p.grad is not None
    )


@torch.no_grad()
@pytest.mark.parametrize("fine_tune", [0, 1, 2])
def test_forward_from_lower_equals_full_forward(tokenizer, fine_tune: int) -> None:
    model = build_nrms(tiny_config(fine_tune_layers=fine_tune), len(tokenizer)).eval()
    encoder = model.news_encoder
    ids, mask = encode(tokenizer, TITLES)
    full = encoder(ids, mask).vectors
    lower = encoder.lower_states(ids, mask)
    assert lower.shape == (*ids.shape, encoder.hidden_size)
    hidden = encoder(ids, mask, output_hidden_states=True).hidden_states
    assert torch.allclose(lower, hidden[encoder.frozen_layers], atol=ATOL)
    assert (encoder.forward_from_lower(lower, mask) - full).abs().max() <= ATOL


def trainable(module: torch.nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_fine_tune_layers_freezes_the_right_parameters(model) -> None:
    encoder: NewsEncoder = model.news_encoder
    plm = encoder.plm
    assert encoder.num_layers == 2
    try:
        encoder.set_fine_tune_layers(0)
        assert frozen(plm) and encoder.caches_lower_layers and encoder.frozen_layers == 2
        encoder.set_fine_tune_layers(1)
        assert frozen(plm.embeddings) and frozen(encoder.layers[0])
        assert trainable(encoder.layers[1]) and encoder.caches_lower_layers
        for n in (2, 5):
            encoder.set_fine_tune_layers(n)
            assert trainable(plm) and not encoder.caches_lower_layers
            assert encoder.frozen_layers == 0 and encoder.fine_tune_layers == 2
        # the NRMS parts on top always train
        for n in (0, 1, 2):
            encoder.set_fine_tune_layers(n)
            for part in (encoder.proj, encoder.mhsa, encoder.pool, model.user_encoder):
                assert trainable(part)
        with pytest.raises(ValueError, match="fine_tune_layers"):
            encoder.set_fine_tune_layers(-1)
    finally:
        encoder.set_fine_tune_layers(2)


def test_build_nrms_applies_fine_tune_layers(tokenizer) -> None:
    model = build_nrms(tiny_config(fine_tune_layers=1), len(tokenizer))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("news_encoder.plm.embeddings") for n in names)
    assert not any(n.startswith("news_encoder.plm.encoder.layer.0.") for n in names)
    assert any(n.startswith("news_encoder.plm.encoder.layer.1.") for n in names)


@torch.no_grad()
def test_embed_words_then_forward_from_word_embeddings(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    words = model.news_encoder.embed_words(ids)
    assert torch.equal(words, model.news_encoder.plm.embeddings.word_embeddings(ids))
    out = model.news_encoder.forward_from_word_embeddings(words, mask, output_hidden_states=True)
    ref = model.news_encoder(ids, mask, output_hidden_states=True)
    assert (out.vectors - ref.vectors).abs().max() <= ATOL
    assert (out.token_weights - ref.token_weights).abs().max() <= ATOL
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert torch.allclose(a, b, atol=ATOL)


@torch.no_grad()
def test_hidden_state_edit_hooks(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    words = model.news_encoder.embed_words(ids)
    ref = model.news_encoder.forward_from_word_embeddings(words, mask, output_hidden_states=True)
    same = model.news_encoder.forward_from_word_embeddings(
        words, mask, output_hidden_states=True, edit={0: lambda h: h, 1: lambda h: h}
    )
    assert torch.equal(same.vectors, ref.vectors)
    edited = model.news_encoder.forward_from_word_embeddings(
        words, mask, output_hidden_states=True, edit={1: torch.zeros_like}
    )
    assert torch.equal(edited.hidden_states[1], torch.zeros_like(ref.hidden_states[1]))
    assert torch.equal(edited.hidden_states[0], ref.hidden_states[0])
    assert not torch.allclose(edited.vectors, ref.vectors)


def test_additive_attention_masks_padding() -> None:
    torch.manual_seed(0)
    pool = AdditiveAttention(4, 3)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    pooled, weights = pool(x, mask)
    assert torch.all(weights[0, 2:] == 0)
    x2 = x.clone()
    x2[0, 2:] = 1e4
    assert torch.allclose(pool(x2, mask)[0][0], pooled[0], atol=ATOL)


def test_score_and_click_probability(model) -> None:
    user = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    cands = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[3.0, 2.0], [1.0, 1.0]]])
    assert NRMS.score(user, cands).tolist() == [[3.0, 0.0], [-2.0, -1.0]]
    assert NRMS.score(user, cands[:, 0]).tolist() == [3.0, -2.0]
    assert torch.allclose(
        model.click_probability(user, cands), torch.sigmoid(model.score(user, cands))
    )


def test_eval_mode_is_deterministic_train_mode_uses_dropout(model, tokenizer) -> None:
    ids, mask = encode(tokenizer, TITLES)
    with torch.no_grad():
        a = model.news_encoder(ids, mask).vectors
        b = model.news_encoder(ids, mask).vectors
        assert torch.equal(a, b)
        model.train()
        try:
            c = model.news_encoder(ids, mask).vectors
        finally:
            model.eval()
    assert not torch.allclose(a, c)
