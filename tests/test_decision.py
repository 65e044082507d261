"""Explaining the model's decision: for a predicted non-click, the explained output is 1 - p and
signed attributions flip, so 'removing what matters' lowers the explained output either way."""

from __future__ import annotations

import torch

from attribution_analysis.methods.explained_model import NewsRecommenderAdapter
from attribution_analysis.methods.integrated_gradients import IntegratedGradientsMethod
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import tiny_config, tiny_tokenizer


def test_decision_probability_and_signed_attributions_flip():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = build_nrms(tiny_config(), len(tok)).eval()
    adapter = NewsRecommenderAdapter(model)
    enc = tok(
        ["markets rally as investors cheer", "storm warning for the coast"],
        return_tensors="pt",
        padding=True,
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    hist = torch.randn(2, 3, model.dim)
    ctx = {"history_emb": hist, "history_mask": torch.ones(2, 3, dtype=torch.bool)}
    plain = adapter.prepare_context(ctx)
    score = adapter.forward(adapter.embed(ids), mask, plain).output
    decided = adapter.with_decision(ids, mask, plain)
    sign = decided["decision_sign"]
    assert torch.equal(sign, torch.where(score >= 0, 1.0, -1.0))
    p_click = adapter.explained_output(score, plain)
    p_decision = adapter.explained_output(score, decided)
    assert (p_decision >= 0.5).all()
    torch.testing.assert_close(p_decision, torch.where(score >= 0, p_click, 1 - p_click))

    ig = IntegratedGradientsMethod(model, tok.all_special_ids, pad_token_id=tok.pad_token_id)
    a_click = ig.attribute(ids, mask, plain)
    a_decision = ig.attribute(ids, mask, decided)
    torch.testing.assert_close(a_decision, a_click * sign[:, None], atol=1e-6, rtol=1e-4)
