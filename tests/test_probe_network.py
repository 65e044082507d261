"""Tests for the DIFFMASK probe networks."""

from __future__ import annotations

import math

import pytest
import torch

from attribution_analysis.methods.diffmask.probe_network import (
    ProbeLayer,
    ProbeNetwork,
    ProbeOutput,
    SimpleProbeNetwork,
)
from attribution_analysis.methods.diffmask.stochastic_gates import HardConcrete, StochasticGates

HIDDEN = 8
BATCH, TOKENS = 3, 5
N_LAYERS = 4  # hidden states 0..N_LAYERS (embeddings + N_LAYERS transformer layers)


def _hidden_states(n: int = N_LAYERS + 1, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, TOKENS, HIDDEN, generator=generator) for _ in range(n)]


def _mask() -> torch.Tensor:
    mask = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 4:] = False
    return mask


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values so probes differ from their (open) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))


def test_probe_layer_starts_open_with_exact_init_bias():
    probe = ProbeLayer(2 * HIDDEN)
    x = torch.randn(BATCH, TOKENS, 2 * HIDDEN)
    logits = probe(x)
    assert logits.shape == (BATCH, TOKENS)
    assert torch.all(logits == 3.0)
    assert torch.all(HardConcrete(logits).prob_nonzero() >= 0.99)
    original = HardConcrete(logits, 0.2, limits=(-0.2, 1.0))
    assert torch.all(original.prob_nonzero() >= 0.95)


def test_probe_layer_default_hidden_dim():
    assert ProbeLayer(64).mlp[0].out_features == 32
    assert ProbeLayer(8).mlp[0].out_features == 16
    assert ProbeLayer(8, width=4).mlp[0].out_features == 4


def test_probe_layer_output_is_unbounded_and_never_saturates():
    """No tanh on the output: the gradient of a logit w.r.t. the output layer is the hidden
    activation, whatever the logit's size, so no logit is frozen at a bound."""
    probe = ProbeLayer(HIDDEN, init_bias=5.0, activation="tanh")
    _randomise(probe)
    with torch.no_grad():
        probe.mlp[-1].weight.mul_(100.0)
    x = torch.randn(BATCH, TOKENS, HIDDEN) * 1e6
    logits = probe(x)
    assert torch.all(torch.isfinite(logits))
    assert logits.abs().max() > 50.0  # far beyond any tanh * 10 bound
    logits.sum().backward()
    assert probe.bias.grad.item() == BATCH * TOKENS
    assert torch.all(probe.mlp[-1].weight.grad != 0)


def test_probe_layer_rejects_wrong_input_dim():
    with pytest.raises(ValueError, match="last dim"):
        ProbeLayer(HIDDEN)(torch.randn(BATCH, TOKENS, HIDDEN + 1))
    with pytest.raises(ValueError):
        ProbeLayer(HIDDEN, activation="relu6")


def test_probe_layer_gradients_flow_at_init():
    probe = ProbeLayer(HIDDEN)
    probe(torch.randn(BATCH, TOKENS, HIDDEN)).sum().backward()
    assert probe.bias.grad is not None and probe.bias.grad.item() != 0
    assert probe.mlp[-1].weight.grad.abs().sum() > 0


def test_simple_probe_shapes_and_layer_selection():
    net = SimpleProbeNetwork(HIDDEN, layer=2).eval()
    _randomise(net)
    states = _hidden_states()
    mask = _mask()
    out = net(states, mask, StochasticGates().eval())
    assert isinstance(out, ProbeOutput)
    assert out.gates.shape == out.log_prob_nonzero.shape == out.log_alpha.shape == (BATCH, TOKENS)
    torch.testing.assert_close(out.log_alpha, net.probe(states[2]))
    perturbed = list(states)
    perturbed[3] = perturbed[3] + 100.0
    assert torch.equal(net(perturbed, mask).log_alpha, out.log_alpha)
    perturbed[2] = perturbed[2] + torch.randn_like(perturbed[2])
    assert not torch.allclose(net(perturbed, mask).log_alpha, out.log_alpha)


def test_simple_probe_padding_and_keep_probability():
    net = SimpleProbeNetwork(HIDDEN).train()
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    out = net(states, mask, StochasticGates().train())
    assert torch.all(out.gates[~mask] == 1.0)
    assert torch.all(out.log_prob_nonzero[~mask] == 0.0)
    keep = net.keep_probability(states, mask)
    assert torch.all(keep[~mask] == 0.0)
    torch.testing.assert_close(keep[mask], out.log_prob_nonzero[mask].exp())


def test_simple_probe_raises_on_missing_layer():
    net = SimpleProbeNetwork(HIDDEN, layer=5)
    with pytest.raises(ValueError, match="hidden_states"):
        net(_hidden_states(3), _mask())


def test_vote_shapes():
    net = ProbeNetwork(HIDDEN, num_probe_layers=3)
    out = net(_hidden_states(), _mask(), StochasticGates().train())
    assert out.gates.shape == out.log_prob_nonzero.shape == (BATCH, TOKENS)
    assert out.log_alpha.shape == (3, BATCH, TOKENS)
    assert net.probes[0].input_dim == 2 * HIDDEN


def test_vote_starts_open():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS)
    keep = net.keep_probability(_hidden_states(), _mask())
    # each of the 4 probes keeps with sigmoid(3 + 2/3 ln 11) = 0.990: the product is 0.990^4
    expected = torch.sigmoid(torch.tensor(3.0 + 2 / 3 * math.log(11.0))) ** 4
    torch.testing.assert_close(keep[_mask()], expected.expand(int(_mask().sum())))
    assert expected > 0.95


def test_vote_multiplies_sampled_gates_and_sums_log_probs():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS)
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    gates = StochasticGates().train()
    out = net(states, mask, gates, generator=torch.Generator().manual_seed(3))

    generator = torch.Generator().manual_seed(3)
    product = torch.ones(BATCH, TOKENS)
    log_prob = torch.zeros(BATCH, TOKENS)
    for k in range(N_LAYERS):
        log_alpha = net.probes[k](torch.cat([states[0], states[k]], dim=-1))
        dist = HardConcrete(log_alpha)
        product = product * torch.where(mask, dist.rsample(generator), torch.ones(()))
        log_prob = log_prob + torch.where(mask, dist.log_prob_nonzero(), torch.zeros(()))

    torch.testing.assert_close(out.gates, product)
    torch.testing.assert_close(out.log_prob_nonzero, log_prob)
    # Sampled gates (with point masses) are multiplied, not sigmoid probabilities.
    assert (out.gates[mask] == 0).any()
    sigmoid_product = torch.sigmoid(out.log_alpha).prod(dim=0)
    assert not torch.allclose(out.gates[mask], sigmoid_product[mask])
    keep = net.keep_probability(states, mask, gates)
    torch.testing.assert_close(keep[mask], log_prob[mask].exp())
    expected_keep = HardConcrete(out.log_alpha).prob_nonzero().prod(dim=0)
    torch.testing.assert_close(keep[mask], expected_keep[mask])


def test_vote_eval_multiplies_deterministic_gates():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS)
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    out = net(states, mask, StochasticGates().eval())
    expected = HardConcrete(out.log_alpha).deterministic().prod(dim=0)
    torch.testing.assert_close(out.gates[mask], expected[mask])
    assert torch.equal(out.gates, net(states, mask, StochasticGates().eval()).gates)


def test_vote_padding():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS)
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    out = net(states, mask, StochasticGates().train())
    assert torch.all(out.gates[~mask] == 1.0)
    assert torch.all(out.log_prob_nonzero[~mask] == 0.0)
    assert torch.all(net.keep_probability(states, mask)[~mask] == 0.0)


def test_vote_never_reads_layers_above_last_probe():
    net = ProbeNetwork(HIDDEN, num_probe_layers=2).eval()
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    out = net(states, mask)
    perturbed = list(states)
    for k in range(2, len(states)):
        perturbed[k] = perturbed[k] * 100.0 + 1.0
    changed_high = net(perturbed, mask)
    assert torch.equal(changed_high.log_alpha, out.log_alpha)
    assert torch.equal(changed_high.gates, out.gates)
    # Exactly the needed states are enough.
    assert torch.equal(net(states[:2], mask).log_alpha, out.log_alpha)
    perturbed = list(states)
    perturbed[1] = perturbed[1] + torch.randn_like(perturbed[1])
    changed_low = net(perturbed, mask)
    assert torch.equal(changed_low.log_alpha[0], out.log_alpha[0])
    assert not torch.allclose(changed_low.log_alpha[1], out.log_alpha[1])


def test_vote_max_layer_restricts_probes_and_layers():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS).eval()
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    full = net(states, mask)
    partial = net(states[:2], mask, max_layer=1)
    assert partial.log_alpha.shape == (2, BATCH, TOKENS)
    torch.testing.assert_close(partial.log_alpha, full.log_alpha[:2])
    expected = HardConcrete(full.log_alpha[:2]).deterministic().prod(dim=0)
    torch.testing.assert_close(partial.gates[mask], expected[mask])
    with pytest.raises(ValueError, match="max_layer"):
        net(states, mask, max_layer=N_LAYERS)


def test_vote_raises_on_too_few_hidden_states():
    net = ProbeNetwork(HIDDEN, num_probe_layers=N_LAYERS)
    with pytest.raises(ValueError, match="hidden states"):
        net(_hidden_states(N_LAYERS - 1), _mask())
    with pytest.raises(ValueError, match="hidden states"):
        net.keep_probability(_hidden_states(1), _mask())
    with pytest.raises(ValueError):
        ProbeNetwork(HIDDEN, num_probe_layers=0)


def test_vote_rejects_wrong_hidden_size():
    net = ProbeNetwork(HIDDEN, num_probe_layers=2)
    states = [torch.randn(BATCH, TOKENS, HIDDEN + 1) for _ in range(2)]
    with pytest.raises(ValueError, match="hidden_states"):
        net(states, _mask())


def test_vote_gradients_reach_probes():
    net = ProbeNetwork(HIDDEN, num_probe_layers=3)
    _randomise(net)
    out = net(_hidden_states(), _mask(), StochasticGates().train())
    (out.gates.sum() + out.log_prob_nonzero.sum()).backward()
    for probe in net.probes:
        assert probe.bias.grad is not None and probe.bias.grad.abs() > 0


def test_vote_uses_own_gate_configuration_by_default():
    gates = StochasticGates(0.2, limits=(-0.2, 1.0))
    net = ProbeNetwork(HIDDEN, num_probe_layers=2, gates=gates).eval()
    _randomise(net)
    states, mask = _hidden_states(), _mask()
    out = net(states, mask)
    expected = gates.log_prob_nonzero(out.log_alpha, mask).sum(dim=0)
    torch.testing.assert_close(out.log_prob_nonzero, expected)
    assert torch.all(out.gates[mask] < 1.0)  # zeta == 1: real tokens are never fully kept


# ------------------------------------------------------------------ a context vector (the user)
@pytest.mark.parametrize("kind", ["simple", "vote"])
def test_probe_reads_a_context_vector_next_to_every_token(kind):
    def build():
        if kind == "simple":
            return SimpleProbeNetwork(HIDDEN, layer=2, context_dim=4)
        return ProbeNetwork(HIDDEN, num_probe_layers=3, context_dim=4)

    net = build()
    _randomise(net)
    hidden = _hidden_states()
    ctx = torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(1))
    base = net.log_alpha(hidden, context=ctx)
    # Each example's logits depend on its own context vector only.
    other = ctx.clone()
    other[1] = -other[1]  # (a constant shift would vanish in the layer norm)
    changed = net.log_alpha(hidden, context=other)
    torch.testing.assert_close(changed[..., [0, 2], :], base[..., [0, 2], :])
    assert not torch.allclose(changed[..., 1, :], base[..., 1, :])
    # The context is layer-normalised: a rescaled context gives the same logits.
    torch.testing.assert_close(net.log_alpha(hidden, context=5.0 * ctx), base, atol=1e-3, rtol=0)
    # Gradients reach the context's normalisation and the first layer's context columns.
    out = net(hidden, _mask(), StochasticGates().train(), context=ctx)
    out.log_prob_nonzero.sum().backward()
    assert net.context_norm.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"context vector \[batch=3, 4\], got None"):
        net.log_alpha(hidden)
    with pytest.raises(ValueError, match="got \\(3, 5\\)"):
        net.log_alpha(hidden, context=torch.zeros(BATCH, 5))
    plain = SimpleProbeNetwork(HIDDEN) if kind == "simple" else ProbeNetwork(HIDDEN, 3)
    with pytest.raises(ValueError, match="reads no context vector"):
        plain.log_alpha(hidden, context=ctx)
