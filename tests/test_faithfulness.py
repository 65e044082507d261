"""Faithfulness and sparsity metrics on toy models, plus bootstrap intervals and the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attribution_analysis.evaluation.faithfulness import (
    attribution_order,
    comprehensiveness_sufficiency,
    comprehensiveness_sufficiency_from_curves,
    deletion_insertion_curves,
    effect_sign_ranks,
    leave_one_out_effects,
    leave_one_out_kendall,
    sparsity_metrics,
    top_k_count,
)
from attribution_analysis.evaluation.statistics import METRICS, MetricSpec, bootstrap_ci

# Positions 0 and 9 are special tokens (never removed); 1..8 are scorable.
WEIGHTS = torch.tensor([0.05, 0.30, 0.02, 0.10, 0.00, 0.20, 0.01, 0.07, 0.15, 0.05])
SCORABLE = torch.tensor([False] + [True] * 8 + [False])


class LinearModel:
    """p = sum of the kept weights; records every call and checks special tokens stay."""

    def __init__(self, weights: torch.Tensor, scorable: torch.Tensor):
        self.weights = weights.double()
        self.scorable = scorable
        self.calls: list[torch.Tensor] = []

    def __call__(self, keep: torch.Tensor) -> torch.Tensor:
        assert keep.dtype == torch.bool and keep.shape[1] == len(self.weights)
        assert keep[:, ~self.scorable].all(), "a non-scorable position was removed"
        self.calls.append(keep.clone())
        return (keep.double() * self.weights).sum(dim=1)


def test_top_k_count():
    assert top_k_count(0.07, 100) == 7  # not 8 from 0.07 * 100 = 7.000000000000001
    assert top_k_count(0.01, 8) == 1
    assert top_k_count(0.5, 7) == 4
    assert top_k_count(1.0, 5) == 5


def test_attribution_order_ties_by_position_and_ignores_unscorable():
    scores = torch.tensor([99.0, 0.5, 0.9, 0.5, 0.1])
    scorable = torch.tensor([False, True, True, True, True])
    assert attribution_order(scores, scorable).tolist() == [2, 1, 3, 4]


def test_comprehensiveness_sufficiency_by_hand():
    model = LinearModel(WEIGHTS, SCORABLE)
    scores = WEIGHTS.clone()
    scores[0] = 100.0  # a special token's score must not matter
    result = comprehensiveness_sufficiency(model, scores, SCORABLE)
    # n = 8: k = ceil(.08), ceil(.4), ceil(.8), ceil(1.6), ceil(4) = 1, 1, 1, 2, 4.
    assert result["k"] == [1, 1, 1, 2, 4]
    assert result["p_full"] == pytest.approx(0.95)
    # Top tokens by weight: .30, .20, .15, .10 -> removed mass 0.30, 0.50, 0.75.
    assert result["comprehensiveness"] == pytest.approx([0.30, 0.30, 0.30, 0.50, 0.75])
    # p(top-k only) = 0.10 (special tokens) + top-k mass.
    assert result["sufficiency"] == pytest.approx([0.55, 0.55, 0.55, 0.35, 0.10])
    assert result["comprehensiveness_aopc"] == pytest.approx(2.15 / 5)
    assert result["sufficiency_aopc"] == pytest.approx(2.10 / 5)
    assert len(model.calls) == 1 and len(model.calls[0]) == 11


def test_comprehensiveness_sufficiency_batching_gives_same_numbers():
    model = LinearModel(WEIGHTS, SCORABLE)
    one = comprehensiveness_sufficiency(model, WEIGHTS, SCORABLE)
    chunked = comprehensiveness_sufficiency(model, WEIGHTS, SCORABLE, batch_size=3)
    assert chunked == one
    assert [len(c) for c in model.calls[1:]] == [3, 3, 3, 2]


def test_comprehensiveness_without_scorable_tokens_is_nan():
    scorable = torch.zeros(3, dtype=torch.bool)
    result = comprehensiveness_sufficiency(
        LinearModel(WEIGHTS[:3], scorable), WEIGHTS[:3], scorable
    )
    assert math.isnan(result["comprehensiveness_aopc"]) and math.isnan(result["sufficiency_aopc"])


class InteractingModel:
    """p = sigmoid(w . keep + v * keep_a * keep_b): not additive, so a variant read off the wrong
    curve point gives another number."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n, generator=g, dtype=torch.float64)
        self.a, self.b = torch.randperm(n, generator=g)[:2].tolist()

    def __call__(self, keep: torch.Tensor) -> torch.Tensor:
        k = keep.double()
        return torch.sigmoid(k @ self.w + 3.0 * k[:, self.a] * k[:, self.b])


@pytest.mark.parametrize("seed", range(6))
def test_comprehensiveness_sufficiency_from_curves_equals_direct(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = 3 + seed * 5  # 3..28 tokens: every fraction's k differs somewhere
    scorable = torch.rand(n, generator=g) > 0.2
    scorable[0] = scorable[-1] = False  # special tokens
    scores = torch.randint(0, 4, (n,), generator=g).float()  # ties: order by position
    model = InteractingModel(n, seed)
    direct = comprehensiveness_sufficiency(model, scores, scorable)
    curves = deletion_insertion_curves(model, scores, scorable)
    derived = comprehensiveness_sufficiency_from_curves(curves)
    assert derived["k"] == direct["k"] and derived["n_scorable"] == direct["n_scorable"]
    for key in ("p_full", "comprehensiveness", "sufficiency", "comprehensiveness_aopc",
                "sufficiency_aopc"):  # fmt: skip
        assert derived[key] == pytest.approx(direct[key], abs=1e-12), key


def test_comprehensiveness_sufficiency_from_curves_edge_cases():
    scorable = torch.zeros(3, dtype=torch.bool)
    curves = deletion_insertion_curves(LinearModel(WEIGHTS[:3], scorable), WEIGHTS[:3], scorable)
    empty = comprehensiveness_sufficiency_from_curves(curves)
    assert math.isnan(empty["comprehensiveness_aopc"]) and math.isnan(empty["sufficiency_aopc"])
    with pytest.raises(ValueError, match="differ in length"):
        comprehensiveness_sufficiency_from_curves({"deletion": [1.0, 0.5], "insertion": [0.0]})
    with pytest.raises(ValueError, match="must not be empty"):
        comprehensiveness_sufficiency_from_curves(curves, fractions=())


def test_deletion_insertion_by_hand():
    weights = torch.tensor([0.6, 0.4])
    scorable = torch.tensor([True, True])
    result = deletion_insertion_curves(LinearModel(weights, scorable), weights, scorable)
    assert result["x"] == pytest.approx([0.0, 0.5, 1.0])
    assert result["deletion"] == pytest.approx([1.0, 0.4, 0.0])
    assert result["insertion"] == pytest.approx([0.0, 0.6, 1.0])
    assert result["deletion_auc"] == pytest.approx(0.5 * 1.4 / 2 + 0.5 * 0.4 / 2)
    assert result["insertion_auc"] == pytest.approx(0.5 * 0.6 / 2 + 0.5 * 1.6 / 2)


def test_decisive_token_first_beats_reverse_ranking():
    # Click probability is high only while token 3 is present.
    scorable = torch.tensor([False, True, True, True, True, True, False])
    decisive = 3

    def predict(keep: torch.Tensor) -> torch.Tensor:
        assert keep[:, ~scorable].all()
        return torch.sigmoid(6.0 * keep[:, decisive].double() - 3.0 + 0.1 * keep.double().sum(1))

    good = torch.tensor([0.0, 0.1, 0.2, 0.9, 0.3, 0.05, 0.0])
    reverse = -good
    good_curves = deletion_insertion_curves(predict, good, scorable)
    reverse_curves = deletion_insertion_curves(predict, reverse, scorable)
    assert good_curves["deletion_auc"] < reverse_curves["deletion_auc"]
    assert good_curves["insertion_auc"] > reverse_curves["insertion_auc"]
    # The curves start at the full input (deletion) and at special tokens only (insertion).
    assert good_curves["deletion"][0] == pytest.approx(good_curves["insertion"][-1])


def test_leave_one_out_kendall_on_additive_model():
    model = LinearModel(WEIGHTS, SCORABLE)
    effects = leave_one_out_effects(model, SCORABLE)
    assert effects.tolist() == pytest.approx(WEIGHTS[SCORABLE].tolist())
    assert leave_one_out_kendall(model, WEIGHTS, SCORABLE) == pytest.approx(1.0)
    assert leave_one_out_kendall(model, -WEIGHTS, SCORABLE) == pytest.approx(-1.0)
    one = torch.tensor([False, True, False])
    assert math.isnan(leave_one_out_kendall(LinearModel(WEIGHTS[:3], one), WEIGHTS[:3], one))


def test_effect_sign_ranks_by_hand():
    # Scorable positions 1..5 with leave-one-out effects (+0.3, -0.2, +0.005, -0.05, +0.02):
    # supporting = positions 1 and 5, opposing = positions 2 and 4, position 3 in neither.
    scorable = torch.tensor([False, True, True, True, True, True, False])
    effects = np.array([0.3, -0.2, 0.005, -0.05, 0.02])
    scores = torch.tensor([9.0, 0.9, 0.1, 0.5, 0.3, 0.7, 9.0])  # order: 1, 5, 3, 4, 2
    ranks = effect_sign_ranks(scores, scorable, effects)
    assert ranks["supporting_rank"] == pytest.approx((0 / 4 + 1 / 4) / 2)
    assert ranks["opposing_rank"] == pytest.approx((4 / 4 + 3 / 4) / 2)
    assert (ranks["n_supporting"], ranks["n_opposing"]) == (2.0, 2.0)
    # The reverse ranking swaps the ends; a tie keeps position order (1, 2, 3, 4, 5).
    reverse = effect_sign_ranks(-scores, scorable, effects)
    assert reverse["supporting_rank"] == pytest.approx((4 / 4 + 3 / 4) / 2)
    assert reverse["opposing_rank"] == pytest.approx((0 / 4 + 1 / 4) / 2)
    tied = effect_sign_ranks(torch.zeros(7), scorable, effects)
    assert tied["supporting_rank"] == pytest.approx((0 / 4 + 4 / 4) / 2)
    assert tied["opposing_rank"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    # The threshold decides membership: with 0.1 only positions 1 and 2 count.
    strict = effect_sign_ranks(scores, scorable, effects, threshold=0.1)
    assert strict["supporting_rank"] == pytest.approx(0.0)
    assert strict["opposing_rank"] == pytest.approx(1.0)


def test_effect_sign_ranks_on_additive_model_and_edge_cases():
    # Effects 0.22, -0.06, 0.02, -0.08, 0.12, -0.07, -0.01, 0.07: four support, three oppose,
    # -0.01 (position 7) is in neither group.
    signed = WEIGHTS - 0.08
    model = LinearModel(signed, SCORABLE)
    effects = leave_one_out_effects(model, SCORABLE)
    best = effect_sign_ranks(signed, SCORABLE, effects)
    assert (best["n_supporting"], best["n_opposing"]) == (4.0, 3.0)
    unsigned = effect_sign_ranks(signed.abs(), SCORABLE, effects)
    assert best["supporting_rank"] < unsigned["supporting_rank"]
    assert best["opposing_rank"] > unsigned["opposing_rank"]
    assert best["opposing_rank"] > best["supporting_rank"]
    none = effect_sign_ranks(signed, SCORABLE, np.zeros(8))
    assert math.isnan(none["supporting_rank"]) and math.isnan(none["opposing_rank"])
    one = torch.tensor([False, True, False])
    assert math.isnan(effect_sign_ranks(WEIGHTS[:3], one, [0.5])["supporting_rank"])
    with pytest.raises(ValueError, match="one value per scorable position"):
        effect_sign_ranks(signed, SCORABLE, np.zeros(7))
    with pytest.raises(ValueError, match="threshold"):
        effect_sign_ranks(signed, SCORABLE, effects, threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        effect_sign_ranks(signed, SCORABLE, effects, threshold=math.nan)
    # Effects that need a gradient (or live on another device) are read as plain numbers.
    grad = effect_sign_ranks(signed, SCORABLE, effects.clone().requires_grad_(True))
    assert grad["opposing_rank"] == pytest.approx(best["opposing_rank"])


def test_every_compared_method_records_its_sign_ranks():
    from attribution_analysis.evaluation.compare import MethodEvaluation, _example_metrics

    signed = WEIGHTS - 0.08
    model = LinearModel(signed, SCORABLE)
    effects = leave_one_out_effects(model, SCORABLE).numpy()
    ev = MethodEvaluation("m")
    _example_metrics(ev, model, signed, SCORABLE, effects, None)
    expected = effect_sign_ranks(signed, SCORABLE, effects)
    assert ev.values["supporting_rank"] == [pytest.approx(expected["supporting_rank"])]
    assert ev.values["opposing_rank"] == [pytest.approx(expected["opposing_rank"])]


def test_sparsity_metrics():
    scorable = torch.tensor([True] * 5 + [False])
    uniform = sparsity_metrics(torch.tensor([-1.0, 1.0, 1.0, 1.0, 1.0, 50.0]), scorable)
    assert uniform["gini"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["entropy"] == pytest.approx(1.0)
    assert uniform["top_mass"] == pytest.approx(0.2)
    one_hot = sparsity_metrics(torch.tensor([0.0, 0.0, -3.0, 0.0, 0.0, 1.0]), scorable)
    assert one_hot["gini"] == pytest.approx(4 / 5)
    assert one_hot["entropy"] == pytest.approx(0.0)
    assert one_hot["top_mass"] == pytest.approx(1.0)
    assert math.isnan(sparsity_metrics(torch.zeros(6), scorable)["gini"])


def test_bad_predict_shape_is_rejected():
    with pytest.raises(ValueError, match="predict returned shape"):
        comprehensiveness_sufficiency(lambda keep: keep.double(), WEIGHTS, SCORABLE)


# ---- statistics -------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, size=20).tolist() + [float("nan")]
    large = rng.normal(1.0, 1.0, size=2000)
    mean, low, high = bootstrap_ci(small)
    assert mean == pytest.approx(np.nanmean(small))
    assert low < mean < high
    mean_l, low_l, high_l = bootstrap_ci(large)
    assert low_l < mean_l < high_l
    assert (high_l - low_l) < (high - low) / 4
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)


def test_metric_registry_covers_every_reported_metric():
    expected = {
        "auprc", "token_f1", "comprehensiveness_aopc", "sufficiency_aopc", "deletion_auc",
        "insertion_auc", "loo_kendall", "gini", "entropy", "auc", "mrr", "ndcg@5", "ndcg@10",
        "seconds_per_example", "completeness_error", "sanity_spearman", "within_margin_share",
        "kept_share", "supporting_rank", "opposing_rank",
    }  # fmt: skip
    assert expected <= set(METRICS)
    for name, spec in METRICS.items():
        assert isinstance(spec, MetricSpec) and spec.name == name
        assert spec.range[0] < spec.range[1] and spec.description
    assert not METRICS["sufficiency_aopc"].higher_is_better
    assert not METRICS["deletion_auc"].higher_is_better
    assert not METRICS["sanity_spearman"].higher_is_better
    assert METRICS["insertion_auc"].higher_is_better
    assert METRICS["opposing_rank"].higher_is_better
    assert not METRICS["supporting_rank"].higher_is_better
