"""The IG-steps benchmark on the tiny model: its table, the reference row agreeing with itself
exactly, and the agreement statistics on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_foundation import copy_tiny_configs, load_benchmark, single_thread


def test_agreement_known_answers():
    bench = load_benchmark("bench_ig_steps")
    ref = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0]), np.array([5.0, 5.0])]
    same = bench.agreement(ref, ref)
    assert same["spearman_mean"] == pytest.approx(1.0) and same["same_top_token"] == 1.0
    flipped = bench.agreement([a[::-1].copy() for a in ref], ref)
    assert flipped["spearman_mean"] == pytest.approx(-1.0)  # the constant pair is left out
    assert flipped["same_top_token"] == pytest.approx(1 / 3)  # only the tied pair's argmax


@pytest.fixture
def one_thread():
    yield from single_thread()


def test_bench_ig_steps_runs_on_the_tiny_model(tmp_path, capsys, monkeypatch, one_thread):
    copy_tiny_configs(tmp_path)
    bench = load_benchmark("bench_ig_steps")
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "configs/attribution/tiny_test.yaml", "--steps", "8,2", "--n_samples", "8"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 2 ") or line.startswith("| 8 ")]
    assert [r.split("|")[1].strip() for r in rows] == ["2", "8"]
    reference = [c.strip() for c in rows[1].split("|")[1:-1]]
    assert reference[2] == "1.00" and reference[5] == "1.0000" and reference[7] == "1.00"
