"""Tests for the Hard Concrete distribution and the StochasticGates module."""

from __future__ import annotations

import math

import pytest
import torch

from attribution_analysis.methods.diffmask.stochastic_gates import HardConcrete, StochasticGates

N_SAMPLES = 200_000
LOG_ALPHAS = torch.arange(-4.0, 4.01, 1.0)

# (temperature, keyword arguments fixing the stretch interval)
CONFIGS = [
    pytest.param(2.0 / 3.0, {"stretch": 0.1}, id="louizos"),
    pytest.param(0.5, {"stretch": 0.2}, id="t0.5-s0.2"),
    pytest.param(0.2, {"limits": (-0.2, 1.0)}, id="diffmask-original"),
]


def _limits(kwargs: dict) -> tuple[float, float]:
    if "limits" in kwargs:
        return kwargs["limits"]
    return -kwargs["stretch"], 1.0 + kwargs["stretch"]


def _samples(temperature: float, kwargs: dict, seed: int = 0) -> tuple[HardConcrete, torch.Tensor]:
    """Return a distribution over ``LOG_ALPHAS`` and ``[grid, N_SAMPLES]`` samples from it."""
    log_alpha = LOG_ALPHAS[:, None].expand(-1, N_SAMPLES)
    dist = HardConcrete(log_alpha, temperature, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    return dist, dist.rsample(generator)


def _within_3se(freq: torch.Tensor, prob: torch.Tensor) -> None:
    se = torch.sqrt(prob * (1 - prob) / N_SAMPLES).clamp_min(1e-6)
    z = (freq - prob).abs() / se
    assert torch.all(z < 3.0), f"freq={freq.tolist()} prob={prob.tolist()} z={z.tolist()}"


@pytest.mark.parametrize(("temperature", "kwargs"), CONFIGS)
def test_monte_carlo_nonzero_frequency_matches_closed_form(temperature, kwargs):
    dist, z = _samples(temperature, kwargs)
    freq = (z != 0).double().mean(dim=1)
    prob = dist.prob_nonzero()[:, 0].double()
    _within_3se(freq, prob)


@pytest.mark.parametrize(("temperature", "kwargs"), CONFIGS)
def test_monte_carlo_point_mass_at_one(temperature, kwargs):
    gamma, zeta = _limits(kwargs)
    _, z = _samples(temperature, kwargs, seed=1)
    freq = (z == 1).double().mean(dim=1)
    if zeta == 1.0:
        assert torch.all(freq == 0)
        return
    # P(z == 1) = P(s >= (1 - gamma) / (zeta - gamma)) in closed form.
    shift = temperature * math.log((1 - gamma) / (zeta - 1))
    prob = torch.sigmoid(LOG_ALPHAS.double() - shift)
    _within_3se(freq, prob)


@pytest.mark.parametrize(("temperature", "kwargs"), CONFIGS)
def test_monte_carlo_gradient_probability(temperature, kwargs):
    """prob_gradient = P(0 < z < 1): the share of samples off the clamps, and of samples whose
    gradient in log_alpha is non-zero (the definition of "saturated" the training reports)."""
    _, z = _samples(temperature, kwargs, seed=2)
    freq = ((z > 0) & (z < 1)).double().mean(dim=1)
    dist = HardConcrete(LOG_ALPHAS, temperature, **kwargs)
    _within_3se(freq, dist.prob_gradient().double())
    if _limits(kwargs)[1] == 1.0:
        return  # zeta = 1: float rounding of s to 1 (then capped below 1) also stops gradients
    log_alpha = LOG_ALPHAS[:, None].expand(-1, 20_000).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    HardConcrete(log_alpha, temperature, **kwargs).rsample(gen).sum().backward()
    alive = (log_alpha.grad != 0).double().mean(dim=1)
    expected = dist.prob_gradient().double()
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / 20_000) + 1e-3
    assert torch.all((alive - expected).abs() < tolerance)
    assert float(HardConcrete(torch.tensor(40.0), temperature, **kwargs).prob_gradient()) < 1e-9
    half = HardConcrete(LOG_ALPHAS.to(torch.bfloat16), temperature, **kwargs).prob_gradient()
    torch.testing.assert_close(half, dist.prob_gradient(), atol=1e-6, rtol=0)  # float32 inside


def test_known_values_louizos_defaults():
    dist = HardConcrete(torch.tensor([0.0, -3.0]))
    prob = dist.prob_nonzero()
    assert prob[0].item() == pytest.approx(0.832, abs=5e-4)
    assert prob[1].item() == pytest.approx(0.198, abs=5e-4)
    # The formula that divides by the temperature gives 0.973 and 0.288: must not match.
    assert abs(prob[0].item() - 0.973) > 0.1
    assert abs(prob[1].item() - 0.288) > 0.05
    beta, t = 2.0 / 3.0, 0.1 / 1.2
    wrong = torch.sigmoid((torch.tensor([0.0, -3.0]) - math.log(t / (1 - t))) / beta)
    assert wrong.tolist() == pytest.approx([0.973, 0.288], abs=5e-4)
    assert not torch.allclose(prob, wrong, atol=0.05)


def test_log_prob_nonzero_is_log_of_prob():
    log_alpha = torch.linspace(-6, 6, 13)
    dist = HardConcrete(log_alpha, 0.5, stretch=0.2)
    torch.testing.assert_close(dist.log_prob_nonzero().exp(), dist.prob_nonzero())
    expected = torch.sigmoid(log_alpha + 0.5 * math.log(1.2 / 0.2))
    torch.testing.assert_close(dist.prob_nonzero(), expected)


def test_original_diffmask_limits_closed_form():
    log_alpha = torch.linspace(-3, 3, 7)
    dist = HardConcrete(log_alpha, 0.2, limits=(-0.2, 1.0))
    torch.testing.assert_close(dist.prob_nonzero(), torch.sigmoid(log_alpha + 0.2 * math.log(5)))


@pytest.mark.parametrize(("temperature", "kwargs"), CONFIGS)
def test_samples_in_unit_interval_with_point_mass_at_zero(temperature, kwargs):
    _, z = _samples(temperature, kwargs, seed=2)
    assert z.min() >= 0 and z.max() <= 1
    middle = z[LOG_ALPHAS.tolist().index(0.0)]
    assert (middle == 0).float().mean() > 0.01
    assert ((middle > 0) & (middle < 1)).float().mean() > 0.01


def test_point_masses_at_zero_and_one_for_moderate_log_alpha():
    z = HardConcrete(torch.zeros(50_000)).rsample(torch.Generator().manual_seed(3))
    assert (z == 0).float().mean() > 0.05
    assert (z == 1).float().mean() > 0.05


def test_no_point_mass_at_one_when_zeta_is_one_even_for_large_log_alpha():
    log_alpha = torch.full((100_000,), 6.0)
    dist = HardConcrete(log_alpha, 0.2, limits=(-0.2, 1.0))
    z = dist.rsample(torch.Generator().manual_seed(4))
    assert torch.all(z < 1)
    assert (z > 0.999).float().mean() > 0.5
    assert torch.all(dist.deterministic() < 1)


def test_rsample_shape_and_reproducibility():
    log_alpha = torch.randn(3, 5)
    dist = HardConcrete(log_alpha)
    a = dist.rsample(torch.Generator().manual_seed(7))
    b = dist.rsample(torch.Generator().manual_seed(7))
    assert a.shape == (3, 5)
    assert torch.equal(a, b)


def test_gradients_reach_log_alpha():
    log_alpha = torch.zeros(1000, requires_grad=True)
    z = HardConcrete(log_alpha).rsample(torch.Generator().manual_seed(5))
    inside = (z > 0) & (z < 1)
    assert inside.any()
    z.sum().backward()
    assert torch.all(log_alpha.grad[inside] > 0)
    assert torch.all(log_alpha.grad[~inside] == 0)


def test_gradient_of_log_prob_nonzero():
    log_alpha = torch.tensor([0.5], requires_grad=True)
    HardConcrete(log_alpha).log_prob_nonzero().sum().backward()
    assert log_alpha.grad.item() > 0


def test_deterministic_closed_form():
    log_alpha = torch.linspace(-5, 5, 21)
    dist = HardConcrete(log_alpha, 0.5, stretch=0.2)
    expected = (torch.sigmoid(log_alpha) * 1.4 - 0.2).clamp(0, 1)
    torch.testing.assert_close(dist.deterministic(), expected)
    torch.testing.assert_close(dist.sigmoid(), torch.sigmoid(log_alpha))
    assert dist.deterministic()[0] == 0 and dist.deterministic()[-1] == 1


@pytest.mark.parametrize(
    ("temperature", "kwargs"),
    [
        (0.0, {}),
        (-1.0, {}),
        (2 / 3, {"stretch": 0.0}),
        (2 / 3, {"stretch": -0.1}),
        (2 / 3, {"limits": (0.0, 1.1)}),
        (2 / 3, {"limits": (-0.1, 0.9)}),
        (2 / 3, {"limits": (0.1, 1.1)}),
    ],
)
def test_invalid_parameters_raise(temperature, kwargs):
    with pytest.raises(ValueError):
        HardConcrete(torch.zeros(2), temperature, **kwargs)
    with pytest.raises(ValueError):
        StochasticGates(temperature, **kwargs)


def test_limits_override_stretch():
    dist = HardConcrete(torch.zeros(1), 0.2, limits=(-0.2, 1.0))
    assert (dist.gamma, dist.zeta) == (-0.2, 1.0)


def test_module_eval_is_deterministic_and_train_is_stochastic():
    gates = StochasticGates()
    log_alpha = torch.zeros(4, 64)
    gates.eval()
    g1, lp1 = gates(log_alpha)
    g2, lp2 = gates(log_alpha)
    assert torch.equal(g1, g2)
    torch.testing.assert_close(g1, HardConcrete(log_alpha).deterministic())
    gates.train()
    s1, lp3 = gates(log_alpha)
    s2, _ = gates(log_alpha)
    assert not torch.equal(s1, s2)
    assert not torch.equal(s1, g1)
    torch.testing.assert_close(lp1, lp3)
    torch.testing.assert_close(lp1, HardConcrete(log_alpha).log_prob_nonzero())


def test_module_uses_its_limits_and_generator():
    gates = StochasticGates(0.2, limits=(-0.2, 1.0)).train()
    log_alpha = torch.randn(2, 10)
    g1, _ = gates(log_alpha, generator=torch.Generator().manual_seed(11))
    dist = HardConcrete(log_alpha, 0.2, limits=(-0.2, 1.0))
    torch.testing.assert_close(g1, dist.rsample(torch.Generator().manual_seed(11)))
    assert "temperature=0.2" in repr(gates) and "-0.2" in repr(gates)


@pytest.mark.parametrize("training", [True, False])
def test_padding_gates_are_one_and_log_prob_zero(training):
    gates = StochasticGates().train(training)
    log_alpha = torch.full((2, 6), -10.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    g, lp = gates(log_alpha, mask)
    assert g.shape == lp.shape == (2, 6)
    assert torch.all(g[~mask] == 1.0)
    assert torch.all(lp[~mask] == 0.0)
    assert torch.all(g[mask] == 0.0)  # log_alpha = -10 closes real tokens
    assert torch.all(lp[mask] < -5)
    lp.sum().backward()
    assert torch.all(log_alpha.grad[~mask] == 0)
    assert torch.all(log_alpha.grad[mask] > 0)


def test_integer_mask_is_accepted():
    gates = StochasticGates().eval()
    g, lp = gates(torch.full((1, 3), -10.0), torch.tensor([[1, 0, 1]]))
    assert g.tolist() == [[0.0, 1.0, 0.0]]
    assert lp[0, 1] == 0
    closed = gates.log_prob_nonzero(torch.zeros(1, 3), torch.tensor([[1, 0, 1]]))
    expected = math.log(0.8318)
    assert closed[0, 1] == 0
    assert closed[0, 0].item() == pytest.approx(expected, abs=1e-3)
    assert closed[0, 2].item() == pytest.approx(expected, abs=1e-3)
