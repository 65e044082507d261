"""Explaining the model's decision: for a predicted non-click, the explained output is 1 - p and
signed attributions flip, so 'removing what matters' lowers the explained output either way."""

from __future__ import annotations

import torch

from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.explained_model import (
    NewsRecommenderAdapter,
    bernoulli_kl_from_logits,
    decision_kl_from_logits,
)
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


def test_decision_kl_counts_only_what_weakens_the_decision():
    """Closed form: KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))) where q moved against the
    decision sign(p), else 0; continuous at q = p with zero gradient there."""
    p = torch.tensor([2.0, 2.0, -1.0, -1.0, 0.5, 0.0])
    q = torch.tensor([1.0, 3.0, 0.0, -3.0, 0.5, -0.2])
    got = decision_kl_from_logits(p, q)
    expected = []
    for pi, qi in zip(p.tolist(), q.tolist(), strict=True):
        a, b = torch.sigmoid(torch.tensor(pi)), torch.sigmoid(torch.tensor(qi))
        kl = a * torch.log(a / b) + (1 - a) * torch.log((1 - a) / (1 - b))
        weakened = qi < pi if pi >= 0 else qi > pi
        expected.append(float(kl) if weakened else 0.0)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    assert got[0] > 0 and got[2] > 0 and got[5] > 0  # weakened a click, a non-click, a tie at 0
    assert got[1] == 0 and got[3] == 0 and got[4] == 0  # strengthened, or unchanged
    torch.testing.assert_close(
        got[[0, 2]], bernoulli_kl_from_logits(p[[0, 2]], q[[0, 2]]), atol=0, rtol=0
    )
    q_at_p = p.clone().requires_grad_(True)
    decision_kl_from_logits(p, q_at_p).sum().backward()
    assert torch.equal(q_at_p.grad, torch.zeros_like(p))


def test_diffmask_takes_a_training_step_with_decision_kl():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = build_nrms(tiny_config(), len(tok)).eval()
    dm = DIFFMASK(model, divergence="decision_kl", special_token_ids=tok.all_special_ids)
    assert dm.settings["divergence"] == "decision_kl"
    enc = tok(["markets rally as investors cheer"], return_tensors="pt")
    ctx = {"history_emb": torch.randn(1, 3, model.dim)}
    dm.train()
    step = dm.step(enc["input_ids"], enc["attention_mask"], ctx)
    assert (step.divergence >= 0).all()
