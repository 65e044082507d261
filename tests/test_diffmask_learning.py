"""DIFFMASK learns: no gate is frozen by saturation, training stops when it has converged, and on
a classifier whose decisive positions are known it finds them (better than the baselines)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from attribution_analysis.data.known_answer import MASK, PAD, SPECIAL_IDS, KeyCountTask
from attribution_analysis.evaluation.known_answer import KnownAnswerSetup, run_known_answer
from attribution_analysis.evaluation.plausibility import rationale_js_divergence
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.convergence import (
    ConvergenceRule,
    check_convergence,
    epochs_without_improvement,
)
from attribution_analysis.methods.diffmask.train_diffmask import floor_armed, train_diffmask
from attribution_analysis.models.sequence_classifier import (
    accuracy,
    small_bert_classifier,
    train_sequence_classifier,
)
from tests.helpers_foundation import single_thread

TASK = KeyCountTask()


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def classifier():
    """A 2-layer BERT classifier trained for a few seconds on the key-count task."""
    torch.set_num_threads(1)
    model = small_bert_classifier(
        TASK.vocab_size, TASK.max_tokens, hidden_size=32, num_heads=2, num_labels=TASK.num_labels
    )
    train_sequence_classifier(model, TASK.generate(3000, seed=1), epochs=4)
    assert accuracy(model, TASK.generate(500, seed=2)) > 0.7
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _diffmask(model, **kw) -> DIFFMASK:
    torch.manual_seed(0)
    return DIFFMASK(
        model, special_token_ids=SPECIAL_IDS, mask_token_id=MASK, pad_token_id=PAD, **kw
    )


class _Phases:
    """Train the probe with lambda held at a fixed value, then measure on fixed data."""

    def __init__(self, diffmask: DIFFMASK) -> None:
        self.dm = diffmask
        self.data = TASK.generate(256, seed=3)
        self.batches = list(DataLoader(self.data, batch_size=64))
        self.opt = torch.optim.Adam(diffmask.probe.parameters(), lr=1e-2)
        self.gen = torch.Generator().manual_seed(0)

    def run(self, lam: float, steps: int) -> float:
        """``steps`` updates at ``lambda = lam``; returns the deterministic mean L0 after."""
        with torch.no_grad():
            self.dm.lagrange_multiplier.fill_(lam)
        self.dm.train()
        for i in range(steps):
            b = self.batches[i % len(self.batches)]
            step = self.dm.step(b["input_ids"], b["attention_mask"], {}, generator=self.gen)
            self.opt.zero_grad()
            self.dm.lagrangian(step).backward()
            self.opt.step()
        self.dm.eval()
        with torch.no_grad():
            return self.dm.step(self.data.input_ids, self.data.attention_mask, {}).l0.mean().item()

    def logit_gradients(self, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient of the loss at ``lambda = lam`` w.r.t. every gate logit, the logits and the
        scorable mask (``[n_probes, batch, tokens]`` twice, ``[batch, tokens]``)."""
        with torch.no_grad():
            self.dm.lagrange_multiplier.fill_(lam)
        self.dm.train()
        b = self.batches[0]
        step = self.dm.step(b["input_ids"], b["attention_mask"], {}, generator=self.gen)
        step.probe.log_alpha.retain_grad()
        self.dm.probe.zero_grad()
        self.dm.lagrangian(step).backward()
        return step.probe.log_alpha.grad, step.probe.log_alpha.detach(), step.scorable


def test_gates_driven_open_by_a_large_lambda_close_when_it_falls_and_reopen(classifier):
    phases = _Phases(_diffmask(classifier))
    driven_open = phases.run(200.0, 200)
    assert driven_open > 0.1  # the keys (about 1/6 of the tokens) are held open
    log_alpha_max = phases.dm.step(phases.data.input_ids, phases.data.attention_mask, {})
    assert log_alpha_max.probe.log_alpha.max() > 8  # far open: a tanh * 10 probe saturates here
    closed = phases.run(0.0, 300)
    assert closed < driven_open / 3  # lambda fell: the open gates closed again
    reopened = phases.run(200.0, 200)
    assert reopened > 0.1  # and the closed ones are not dead either


def test_the_lambda_floor_holds_decisive_gates_open_where_zero_lets_them_close(classifier):
    """The cycle the floor ``lambda_min`` removes: on a slack constraint (every example within
    the margin) lambda falls to its floor. At 0, sparsity alone closes the keys' gates and the
    examples leave the margin; at the default floor of 1 the constraint term still pulls on
    the examples that sampled masks push outside, so the keys stay kept and the examples
    within the margin."""

    def within(dm) -> float:
        with torch.no_grad():
            step = dm.step(phases.data.input_ids, phases.data.attention_mask, {})
        return step.within_margin.float().mean().item()

    phases = _Phases(_diffmask(classifier))
    phases.run(200.0, 200)
    start = phases.dm.state_dict()
    assert within(phases.dm) > 0.95  # slack: every example inside the margin
    floor = phases.run(1.0, 300)
    floor_within = within(phases.dm)
    phases.dm.load_state_dict(start)
    phases.opt = torch.optim.Adam(phases.dm.probe.parameters(), lr=1e-2)
    zero = phases.run(0.0, 300)
    zero_within = within(phases.dm)
    # measured: floor L0 0.14, within 0.87; zero L0 0.003, within 0.23
    assert floor > 0.1 and floor_within > 0.8, (floor, floor_within)  # the keys stay kept
    assert zero < floor / 3 and zero_within < floor_within - 0.3, (zero, zero_within)


def test_the_multiplier_is_clamped_to_its_floor_and_cap(classifier):
    dm = _diffmask(classifier, lambda_min=0.5, lambda_init=2.0, lambda_max=10.0)
    for value, clamped in ((-3.0, 0.5), (0.2, 0.5), (4.0, 4.0), (50.0, 10.0)):
        with torch.no_grad():
            dm.lagrange_multiplier.fill_(value)
        dm.clamp_multiplier()
        assert dm.lagrange_multiplier.item() == clamped
    with torch.no_grad():
        dm.lagrange_multiplier.fill_(0.2)
    dm.clamp_multiplier(floor=False)  # the first epoch of training: no floor
    assert dm.lagrange_multiplier.item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lambda_min <= lambda_init"):
        _diffmask(classifier, lambda_min=2.0, lambda_init=1.0)


def test_training_applies_the_floor_once_lambda_has_risen_above_it(classifier):
    """Until the constraint first binds lambda may fall below ``lambda_min`` (all gates start
    open, nothing violates the margin, so the dual descends and sparsity prunes the gates);
    once lambda has risen above the floor, it never falls below it again."""
    train = DataLoader(TASK.generate(256, seed=6), batch_size=32, shuffle=True)
    dm = _diffmask(classifier)
    history = train_diffmask(
        dm, train, n_epochs=6, convergence=None, save_checkpoints=False, quiet=True, lr_probe=1e-2
    )
    lambdas = [s["lambda"] for s in history.steps]
    armed = next(i for i, v in enumerate(lambdas) if v > 1.0)
    assert min(lambdas[:armed]) < 1.0 and min(lambdas[armed:]) >= 1.0
    assert floor_armed(history.steps[: armed + 1], 1.0)
    assert not floor_armed(history.steps[:armed], 1.0)


def test_every_gate_logit_and_probe_weight_gets_a_gradient_when_saturated(classifier):
    phases = _Phases(_diffmask(classifier))
    phases.run(200.0, 200)  # drive gates far open / closed
    for lam in (0.0, 200.0):
        grad, log_alpha, scorable = phases.logit_gradients(lam)
        live = grad[:, scorable]
        assert torch.all(live != 0), f"lambda={lam}: {int((live == 0).sum())} dead gate logits"
        if lam == 0.0:  # only sparsity acts: descent must close every open gate
            opened = log_alpha[:, scorable] > 0
            assert opened.any() and torch.all(live[opened] > 0), "an open gate is not pushed"
        for name, p in phases.dm.probe.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_a_tanh_bounded_logit_would_be_dead_where_the_probe_is_alive():
    """The failure mode the unbounded probe avoids, measured: beyond |x| ~ 9 the gradient of
    ``tanh(x) * 10`` is exactly 0 in float32, while the probe's output layer is linear."""
    x = torch.tensor([2.0, 9.5, 20.0], requires_grad=True)
    (torch.tanh(x) * 10).sum().backward()
    assert x.grad[0] > 0 and torch.all(x.grad[1:] == 0)


def test_padding_and_special_tokens_get_no_gradient_and_no_l0(classifier):
    phases = _Phases(_diffmask(classifier))
    grad, _, scorable = phases.logit_gradients(1.0)
    assert torch.all(grad[:, ~scorable] == 0)


def test_logit_penalty_matches_its_formula(classifier):
    dm = _diffmask(classifier, logit_decay=0.01)
    data = TASK.generate(8, seed=4)
    step = dm.step(data.input_ids, data.attention_mask, {})
    la = step.probe.log_alpha[:, step.scorable]
    torch.testing.assert_close(dm.logit_penalty(step), 0.01 * la.pow(2).mean())
    off = _diffmask(classifier, logit_decay=0.0)
    assert off.logit_penalty(off.step(data.input_ids, data.attention_mask, {})).item() == 0.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_objective_settings_are_refused(classifier, bad):
    with pytest.raises(ValueError, match="logit_decay"):
        _diffmask(classifier, logit_decay=bad)
    with pytest.raises(ValueError, match="sparsity_loss"):
        _diffmask(classifier, sparsity_loss="l1")
    with pytest.raises(ValueError, match="constraint_margin"):
        _diffmask(classifier, constraint_margin=float("nan"))


def test_sparsity_term_l0_and_log_l0(classifier):
    data = TASK.generate(4, seed=5)
    for kind in ("l0", "log_l0"):
        dm = _diffmask(classifier, sparsity_loss=kind)
        step = dm.step(data.input_ids, data.attention_mask, {})
        lp = step.probe.log_prob_nonzero
        per = lp.exp() if kind == "l0" else lp
        expected = torch.stack([per[i][step.scorable[i]].mean() for i in range(len(data))]).mean()
        torch.testing.assert_close(dm.sparsity_term(step), expected)


# ------------------------------------------------------------------ convergence rule
def _epochs(lambdas, l0s):
    return [
        {"epoch": i + 1, "lambda": a, "val_l0": b} for i, (a, b) in enumerate(zip(lambdas, l0s))
    ]


def test_convergence_rule_on_known_histories():
    rule = ConvergenceRule(window=3, lambda_rtol=0.1, lambda_atol=1.0, l0_atol=0.01, min_epochs=4)
    rising = check_convergence(_epochs([14, 40, 80, 110, 137], [0.3] * 5), rule)
    assert not rising.converged and rising.lambda_spread == pytest.approx(97)
    # the last 4 lambdas 40..52 spread 12 > 1 + 0.1 * 48.25: not level
    late = check_convergence(_epochs([14, 40, 50, 51, 52], [0.3, 0.2, 0.2, 0.2, 0.2]), rule)
    assert late.lambda_spread == pytest.approx(12) and not late.converged
    # lambda level (spread 2 <= 6.1) but L0 still moving (spread 0.03 > 0.01): not converged
    moving = check_convergence(_epochs([14, 50, 51, 52, 51], [0.3, 0.23, 0.22, 0.21, 0.2]), rule)
    assert moving.lambda_spread <= moving.lambda_tolerance and not moving.converged
    assert moving.l0_spread == pytest.approx(0.03)
    level = check_convergence(_epochs([14, 50, 51, 52, 51], [0.3, 0.204, 0.2, 0.198, 0.2]), rule)
    assert level.converged
    assert level.lambda_tolerance == pytest.approx(1.0 + 0.1 * (50 + 51 + 52 + 51) / 4)
    assert level.l0_spread == pytest.approx(0.006)
    # level, but pinned at the cap: the constraint cannot be met, so never converged
    capped = check_convergence(_epochs([200] * 5, [0.0] * 5), rule, lambda_max=200.0)
    assert capped.lambda_at_cap and not capped.converged
    assert check_convergence(_epochs([200] * 5, [0.0] * 5), rule).converged
    near_zero = check_convergence(_epochs([5, 0.0, 0.8, 0.1, 0.0], [0.2] * 5), rule)
    assert near_zero.converged  # a slack constraint: lambda hovers near 0
    # level, but half the training masks miss the margin: a slowly climbing lambda (seen with
    # a small lr_lambda) is not a balanced constraint
    slow = [
        {**e, "delivered_within_margin": 0.44} for e in _epochs([3, 3.5, 4, 4.2, 4.4], [0.1] * 5)
    ]
    unmet = check_convergence(slow, rule, constraint_target=0.95)
    assert unmet.constraint_unmet and not unmet.converged
    assert "too few training masks within the margin" in unmet.describe()
    assert check_convergence(slow, rule).converged  # without a target: the old rule
    met = [{**e, "delivered_within_margin": 0.96} for e in slow]
    assert check_convergence(met, rule, constraint_target=0.95).converged
    too_early = ConvergenceRule(window=1, min_epochs=4)
    assert not check_convergence(_epochs([1, 1, 1], [0.2] * 3), too_early).converged
    assert not check_convergence(_epochs([1], [0.2]), rule).converged
    with pytest.raises(ValueError):
        ConvergenceRule(window=0)


def _val_epochs(lambdas, l0s, within):
    return [
        {"epoch": i + 1, "lambda": a, "val_l0": b, "val_within_margin": c}
        for i, (a, b, c) in enumerate(zip(lambdas, l0s, within))
    ]


def test_plateau_rule_on_known_histories():
    """The validation plateau: counted in epochs that meet the target, from the last one that
    lowered the validation L0 by more than l0_atol; smaller gains do not reset it, epochs under
    the target are not counted; lambda creeping does not matter; not called converged."""
    rule = ConvergenceRule(l0_atol=0.01, min_epochs=4, patience=4)
    creeping = [12, 42, 49, 50, 50, 51, 52, 54, 58, 62, 67]  # never level over 4 epochs
    l0s = [0.01, 0.234, 0.233, 0.231, 0.2145, 0.2305, 0.2005, 0.2118, 0.211, 0.2096, 0.2133]
    within = [0.36, 0.98, 0.97, 0.98, 0.97, 0.97, 0.94, 0.97, 0.94, 0.97, 0.98]
    # epoch 2 sets the reference, epoch 5 beats it by 0.0195; epochs 7 and 9 are under the
    # target (not counted), epochs 6, 8, 10, 11 gain less than 0.01 over 0.2145: 4 at epoch 11
    assert epochs_without_improvement(_val_epochs(creeping, l0s, within), 0.95, 0.01) == 4
    for n, expected in [(10, False), (11, True)]:
        status = check_convergence(
            _val_epochs(creeping, l0s, within)[:n], rule, 200.0, target_within_margin=0.95
        )
        assert status.plateau is expected and not status.converged
        assert status.stop is expected
    assert "validation plateau" in status.describe()
    # a gain of more than l0_atol resets the count; slow gains that add up to it count too
    slow = [0.30, 0.296, 0.292, 0.288, 0.284, 0.28, 0.279]  # epoch 4: 0.012 below epoch 1
    assert epochs_without_improvement(_val_epochs(creeping, slow, [1.0] * 7), 0.95, 0.01) == 3
    # nothing meets the target: no plateau (training has nothing to deliver yet)
    none_ok = _val_epochs(creeping, l0s, [0.5] * 11)
    assert epochs_without_improvement(none_ok, 0.95, 0.01) is None
    assert not check_convergence(none_ok, rule, target_within_margin=0.95).plateau
    # patience 0 switches the plateau stop off; without a target it is never judged
    epochs = _val_epochs(creeping, l0s, within)
    off = ConvergenceRule(patience=0)
    assert not check_convergence(epochs, off, target_within_margin=0.95).plateau
    assert not check_convergence(epochs, rule).plateau
    assert not check_convergence(epochs[:3], ConvergenceRule(patience=1, min_epochs=4),
                                 target_within_margin=0.95).plateau  # fmt: skip
    with pytest.raises(ValueError):
        ConvergenceRule(patience=-1)


def test_training_stops_on_a_plateau_and_says_it_did_not_converge(classifier, tmp_path, capsys):
    """The level rule cannot be judged before 6 epochs (window 5) and no epoch can gain more
    than l0_atol = 1: the run stops once `patience` epochs passed the first selectable one,
    reports "plateau" (not converged), keeps the best epoch, and does not train further on
    resume."""
    train = DataLoader(TASK.generate(256, seed=6), batch_size=64)
    val = DataLoader(TASK.generate(64, seed=7), batch_size=64)
    rule = ConvergenceRule(window=5, l0_atol=1.0, min_epochs=1, patience=2)
    kwargs = dict(n_epochs=10, val_loader=val, output_dir=tmp_path, convergence=rule,
                  target_within_margin=0.0)  # fmt: skip
    history = train_diffmask(_diffmask(classifier), train, **kwargs)
    assert len(history.epochs) == 3 and history.best_epoch is not None
    assert not history.converged and history.stopped
    assert history.convergence["stop_reason"] == "plateau"
    out = capsys.readouterr().out
    assert "validation plateau, NOT converged" in out and "without converging" not in out
    again = train_diffmask(_diffmask(classifier), train, quiet=True, **kwargs)
    assert len(again.epochs) == 3 and again.convergence["plateau"]
    assert not (tmp_path / "checkpoints" / "diffmask_epoch_4.pt").exists()


def test_training_stops_when_converged_and_says_when_it_did_not(classifier, capsys):
    train = DataLoader(TASK.generate(512, seed=6), batch_size=64, shuffle=True)
    val = DataLoader(TASK.generate(128, seed=7), batch_size=64)
    dm = _diffmask(classifier)
    history = train_diffmask(
        dm, train, n_epochs=40, val_loader=val, save_checkpoints=False, quiet=True
    )
    assert history.converged and len(history.epochs) < 40
    status = history.convergence
    assert status["lambda_spread"] <= status["lambda_tolerance"]
    assert status["l0_spread"] <= status["l0_tolerance"]
    assert status["stop_reason"] == "converged"
    capped = _diffmask(classifier)
    history = train_diffmask(capped, train, n_epochs=2, val_loader=val, save_checkpoints=False)
    assert not history.converged and history.convergence["stop_reason"] == "epoch cap"
    assert "without converging" in capsys.readouterr().out


def test_a_converged_run_does_not_train_further_on_resume(classifier, tmp_path, capsys):
    train = DataLoader(TASK.generate(256, seed=6), batch_size=64)
    val = DataLoader(TASK.generate(64, seed=7), batch_size=64)
    rule = ConvergenceRule(window=1, lambda_atol=1e9, l0_atol=1.0, min_epochs=2)
    first = train_diffmask(
        _diffmask(classifier),
        train,
        n_epochs=10,
        val_loader=val,
        output_dir=tmp_path,
        quiet=True,
        convergence=rule,
    )
    assert first.converged and len(first.epochs) == 2
    capsys.readouterr()
    again = train_diffmask(
        _diffmask(classifier),
        train,
        n_epochs=10,
        val_loader=val,
        output_dir=tmp_path,
        quiet=True,
        convergence=rule,
    )
    assert "resumed from" in capsys.readouterr().out
    assert len(again.epochs) == 2 and again.converged
    assert not (tmp_path / "checkpoints" / "diffmask_epoch_3.pt").exists()
    # a stricter rule given on resume is applied to the saved epochs: training goes on
    strict = ConvergenceRule(window=2, lambda_atol=1e9, l0_atol=1.0, min_epochs=3)
    more = train_diffmask(
        _diffmask(classifier),
        train,
        n_epochs=10,
        val_loader=val,
        output_dir=tmp_path,
        quiet=True,
        convergence=strict,
    )
    assert len(more.epochs) == 3 and more.converged


# ------------------------------------------------------------------ known answer
def test_rationale_js_divergence_closed_forms():
    assert rationale_js_divergence([0, 1, 0, 1], [0, 3, 0, 3]) == pytest.approx(0.0)
    assert rationale_js_divergence([1, 0], [0, 5]) == pytest.approx(1.0)
    # p uniform over 4, q uniform over 2: JS = 1/2 [KL(p||m) + KL(q||m)], m = (3/8,3/8,1/8,1/8)
    import math

    kl_p = 2 * 0.25 * math.log2(0.25 / 0.375) + 2 * 0.25 * math.log2(0.25 / 0.125)
    kl_q = 2 * 0.5 * math.log2(0.5 / 0.375)
    assert rationale_js_divergence([1, 1, 0, 0], [0, 0, 0, 0]) == pytest.approx((kl_p + kl_q) / 2)
    assert rationale_js_divergence([1, 1, 0, 0], [-2, 2, 0, 0]) == pytest.approx(0.0)
    assert math.isnan(rationale_js_divergence([0, 0], [1, 2]))


def test_key_count_task_rationale_is_the_keys():
    data = TASK.generate(200, seed=0)
    keys = (data.input_ids >= TASK.first_key) & (data.input_ids < TASK.first_filler)
    assert torch.equal(keys.long(), data.rationale)
    assert torch.equal(data.rationale.sum(-1), data.labels)
    assert torch.equal(TASK.generate(200, seed=0).input_ids, data.input_ids)


@pytest.mark.slow
def test_known_answer_diffmask_finds_the_keys_and_beats_the_baselines():
    setup = KnownAnswerSetup(
        n_classifier_train=3000,
        classifier_epochs=4,
        n_diffmask_train=1000,
        n_val=200,
        n_test=200,
        ig_steps=16,
    )
    result = run_known_answer(setup, seeds=[0])
    assert result["classifier_accuracy"] > 0.95
    s = {name: row["js"][0] for name, row in result["summary"].items()}
    assert s["diffmask"] <= 0.05, s
    for name in ("ig", "saliency", "random", "uniform"):
        assert s["diffmask"] < s[name], s
    d = result["per_seed"]["diffmask"][0]
    assert d["converged"] and d["within_margin"] >= 0.95
    assert d["distinct_scores"] > 20  # graded, not two values


def test_probe_hidden_dim_sets_the_probe_width(classifier):
    for probe_type in ("layerwise", "simple"):
        dm = _diffmask(classifier, probe_type=probe_type, probe_hidden_dim=8)
        widths = {m.out_features for m in dm.probe.modules() if isinstance(m, torch.nn.Linear)}
        assert widths == {8, 1}


def test_without_checkpoints_the_selected_epoch_is_restored(classifier):
    train = DataLoader(TASK.generate(256, seed=6), batch_size=64)
    val = DataLoader(TASK.generate(64, seed=7), batch_size=64)
    dm = _diffmask(classifier)
    history = train_diffmask(
        dm,
        train,
        n_epochs=5,
        val_loader=val,
        save_checkpoints=False,
        quiet=True,
        convergence=None,
        target_within_margin=0.0,  # every epoch qualifies: the sparsest is selected
    )
    best = history.best_epoch
    assert best is not None
    l0s = [e["val_l0"] for e in history.epochs]
    assert l0s[best - 1] == min(l0s)
    from attribution_analysis.methods.diffmask.train_diffmask import validate

    assert validate(dm, val, "cpu")["l0"] == pytest.approx(l0s[best - 1], abs=1e-6)
