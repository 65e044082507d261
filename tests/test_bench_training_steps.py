"""The training-step benchmark end to end on the tiny configs: both tables, finite ratios, and
the two DIFFMASK runs (masked passes with gradient for the examples at the margin only, and
for the whole batch) agreeing epoch by epoch."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers_foundation import copy_tiny_configs, load_benchmark


def test_bench_training_steps_on_tiny_configs(tmp_path):
    copy_tiny_configs(tmp_path)
    bench = load_benchmark("bench_training_steps")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        text = bench.main(
            [
                "--epochs", "2", "--steps", "3",
                "--attribution_config", "configs/attribution/tiny_test.yaml",
                "--recommender_configs", "configs/recommender/tiny_test.yaml",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    assert "| hinge-only (default) |" in text and "| cache, 10 steps |" in text
    ratios = [float(r) for r in re.findall(r"\| ([0-9.]+) \|\n", text)]
    assert len(ratios) == 4 and all(r > 0 for r in ratios), text
    diff = float(re.search(r"epoch summaries \(.*\): (\S+)", text).group(1))
    assert diff < 1e-4, text
