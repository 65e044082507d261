"""Multi-process runs through ``accelerate`` on 2 CPU processes (gloo), against 1 process.

Launches ``tests/multiprocess_worker.py`` with ``torchrun`` twice (1 and 2 processes) on the
same corpus and checks: each process saw different data and together all of it; the
recommender trained on 2 processes equals the 1-process one (split global batches, averaged
gradients: equal up to float summation order, tolerance 1e-5); both DIFFMASK processes end
with identical parameters (gradients were synchronised, although each saw other examples);
the attributions file written by the main process equals the 1-process file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attribution_analysis.config import RecommenderConfig
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.models.inference import score_impressions
from attribution_analysis.models.serialization import load_model
from tests.helpers_foundation import data_config, make_corpus, tiny_config, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _launch(n_procs: int, corpus: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_procs),
           "--master_port", str(29500 + n_procs), str(ROOT / "tests" / "multiprocess_worker.py"),
           str(corpus), str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    corpus = make_corpus(root / "corpus")
    for n in (1, 2):
        _launch(n, corpus, root / f"p{n}")
    return root


def _seen(run: Path, rank: int) -> dict:
    return json.loads((run / f"seen_{rank}.json").read_text())


@pytest.mark.slow
def test_each_process_sees_its_own_share_of_the_batches(runs):
    one = _seen(runs / "p1", 0)
    a, b = _seen(runs / "p2", 0), _seen(runs / "p2", 1)
    for key in ("recommender", "diffmask"):
        assert len(a[key]) == len(b[key]) == len(one[key]) // 2
        assert a[key] != b[key]
        assert sorted(a[key] + b[key]) == sorted(one[key])  # together: the same examples


@pytest.mark.slow
def test_two_process_recommender_matches_one_process(runs):
    """Same click scores on every dev impression (to 1e-4) and the same losses. Weights are
    compared through the scores: a bias whose exact gradient is 0 (attention key biases) gets
    float-noise gradients that Adam scales to lr-sized steps, differently per summation order,
    without changing any output."""
    h1 = json.loads((runs / "p1" / "rec" / "history.json").read_text())
    h2 = json.loads((runs / "p2" / "rec" / "history.json").read_text())
    assert h1[0]["train_loss"] == pytest.approx(h2[0]["train_loss"], abs=1e-6)
    assert h1[0]["auc"] == pytest.approx(h2[0]["auc"], abs=1e-9)
    config = RecommenderConfig(model=tiny_config(fine_tune_layers=0, dropout=0.0))
    data = load_mind_data(data_config(runs / "corpus", runs / "cache"), tiny_tokenizer())
    scores = [
        score_impressions(load_model(runs / f"p{n}" / "rec" / "best", config), data.dev,
                          data.table, 10)
        for n in (1, 2)
    ]  # fmt: skip
    flat = [torch.as_tensor(np.concatenate(s)) for s in scores]
    assert flat[0].numel() > 100
    torch.testing.assert_close(flat[1], flat[0], atol=1e-4, rtol=0)
    w1 = load_file(str(runs / "p1" / "rec" / "best" / "model.safetensors"))
    w2 = load_file(str(runs / "p2" / "rec" / "best" / "model.safetensors"))
    for name in ("news_encoder.proj.weight", "user_encoder.pool.query.weight"):
        torch.testing.assert_close(w2[name], w1[name], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_diffmask_processes_hold_the_same_parameters(runs):
    s0 = torch.load(runs / "p2" / "diffmask_state_0.pt", weights_only=True)
    s1 = torch.load(runs / "p2" / "diffmask_state_1.pt", weights_only=True)
    start = torch.load(runs / "p1" / "diffmask_state_0.pt", weights_only=True)
    for name in s0:
        torch.testing.assert_close(s1[name], s0[name], atol=0, rtol=0, msg=name)
    moved = max((s0[k] - start[k]).abs().max().item() for k in s0)
    assert moved > 0  # a different random path from the 1-process run, same shapes
    assert (runs / "p2" / "dm" / "training_history.json").is_file()


@pytest.mark.slow
def test_extraction_file_is_written_once_in_loader_order(runs):
    lines1 = (runs / "p1" / "attributions.jsonl").read_text().splitlines()
    assert len(lines1) == 44
    assert _seen(runs / "p2", 0)["returned"] == _seen(runs / "p2", 1)["returned"] == 44
    # same examples in the same order; the DIFFMASKs differ (other gate noise), the ids not
    ids1 = [json.loads(x)["ids"] for x in lines1]
    ids2 = [
        json.loads(x)["ids"] for x in (runs / "p2" / "attributions.jsonl").read_text().splitlines()
    ]
    assert ids2 == ids1


@pytest.mark.slow
def test_analysis_command_on_two_processes(tmp_path):
    """``analyze_diffmask`` under ``torchrun`` (2 CPU processes, ``device: auto``): the
    recommender, DIFFMASK, extraction and comparison run sharded; one run folder, written once,
    complete."""

    for rel in ("configs/attribution/tiny_test.yaml", "configs/recommender/tiny_test.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / rel).read_text()  # device: auto, as the shipped configs: on this CPU
        assert "device: cpu" in text  # machine the launch must still form one 2-process run
        (tmp_path / rel).write_text(text.replace("device: cpu", "device: auto"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29507", str(ROOT / "attribution_analysis" / "analyze_diffmask.py"),
           "--config", "configs/attribution/tiny_test.yaml", "--n_epochs", "1",
           "--n_samples", "12", "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (run,) = (tmp_path / "output/test_tiny/diffmask").glob("run_*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["training"]["epochs"] == 1
    assert len((run / "attributions.jsonl").read_text().splitlines()) == 12
    for name in ("report.html", "top_words.csv", "comparison/comparison.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert done.stdout.count("[result] run folder:") == 1  # printed by the main process only
    assert not list(run.rglob("*.tmp"))


def test_auto_joins_a_launched_cpu_group_only_without_cuda(monkeypatch):
    """accelerate forms a 2-process CPU group only with ``cpu=True``: ``device: auto`` asks for
    it under a launcher on a machine without CUDA (else each process ran the command alone)."""
    from attribution_analysis.utils import devices

    launched = {"WORLD_SIZE": "2"}
    assert devices.runs_on_cpu("cpu", {}) and devices.runs_on_cpu("cpu", launched)
    assert not devices.runs_on_cpu("auto", {}) and not devices.runs_on_cpu(
        "auto", {"WORLD_SIZE": "1"}
    )
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    assert devices.runs_on_cpu("auto", launched)
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    assert not devices.runs_on_cpu("auto", launched) and not devices.runs_on_cpu("cuda", launched)
