"""The analyze_diffmask command end to end on a tiny random model: run folder contents,
``--skip_training`` reproduces the attributions exactly, resume with ``--run_dir``, clear errors,
and the report rendered in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from attribution_analysis.analyze_diffmask import main
from attribution_analysis.evaluation.attribution_run import AttributionRun
from tests.helpers_browser import start_chromium

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding copies of the tiny test configs (paths are cwd-relative)."""
    root = tmp_path_factory.mktemp("e2e")
    for rel in ("configs/attribution/tiny_test.yaml", "configs/recommender/tiny_test.yaml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    return root


def _run(args: list[str]) -> int:
    return main(["--config", "configs/attribution/tiny_test.yaml", "--quiet", *args])


@pytest.fixture(scope="module")
def trained_run(workdir):
    mp = pytest.MonkeyPatch()
    mp.chdir(workdir)
    try:
        assert _run(["--n_epochs", "2", "--n_samples", "12", "--top_k", "4"]) == 0
    finally:
        mp.undo()
    (run,) = sorted((workdir / "output/test_tiny/diffmask").glob("run_*"))
    return run


def test_run_folder_contents(trained_run):
    for name in (
        "config.yaml",
        "checkpoints/diffmask_epoch_1.pt",
        "checkpoints/diffmask_epoch_2.pt",
        "training_history.csv",
        "attributions.jsonl",
        "top_words_per_sample.csv",
        "top_words.csv",
        "summary.json",
        "report.html",
        "comparison/comparison.md",
    ):
        assert (trained_run / name).is_file(), name
    run = AttributionRun.load(trained_run / "attributions.jsonl")
    assert len(run) == 12
    first = run.results[0]
    assert {"impression_id", "user_id", "news_id"} <= set(first.ids)
    assert first.method == "diffmask" and len(first.tokens) == len(first.token_scores)
    assert None not in (first.original_output, first.masked_output, first.divergence)
    assert first.annotations["title"] and "history_titles" in first.annotations
    rows = run.rows()
    assert {"title", "original_prob", "masked_prob", "gold_words"} <= set(rows[0])
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test"]["n_samples"] == 12 and "auprc" in summary["test"]
    assert {r["method"] for r in summary["comparison"]} == {
        "diffmask",
        "diffmask_effect",
        "diffmask_loo",
        "ig",
        "random",
    }
    with (trained_run / "top_words_per_sample.csv").open() as handle:
        assert max(int(r["rank"]) for r in csv.DictReader(handle)) <= 4
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["diffmask"]["training"]["n_epochs"] == 2 and config["top_k"] == 4
    plots = list((trained_run / "plots").glob("*.png"))
    assert plots, "training curves are plotted"


def test_skip_training_reproduces_attributions(trained_run, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    ckpt = trained_run / "checkpoints" / "diffmask_epoch_2.pt"
    best = trained_run / "checkpoints" / "best.pt"
    used = best if best.is_file() else ckpt
    out = workdir / "again"
    assert (
        _run(
            [
                "--n_samples",
                "12",
                "--checkpoint",
                str(used),
                "--skip_training",
                "--run_dir",
                str(out),
            ]
        )
        == 0
    )
    first = [json.loads(line) for line in (trained_run / "attributions.jsonl").open()]
    second = [json.loads(line) for line in (out / "attributions.jsonl").open()]
    assert [r["token_scores"] for r in first] == [r["token_scores"] for r in second]
    assert [r["masked_output"] for r in first] == [r["masked_output"] for r in second]


def test_interrupted_training_resumes(trained_run, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    run = workdir / "resumed"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "diffmask_epoch_2.pt").unlink()
    assert (
        _run(["--n_epochs", "2", "--n_samples", "12", "--top_k", "4", "--run_dir", str(run)]) == 0
    )
    assert "resumed from" in capsys.readouterr().out
    first = [json.loads(line) for line in (trained_run / "attributions.jsonl").open()]
    again = [json.loads(line) for line in (run / "attributions.jsonl").open()]
    assert [r["token_scores"] for r in first] == [r["token_scores"] for r in again]


def test_clear_errors(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert _run(["--skip_training"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    assert _run(["--checkpoint", "missing.pt", "--skip_training"]) == 2
    assert "checkpoint not found: missing.pt" in capsys.readouterr().err
    bad = workdir / "bad.yaml"
    bad.write_text("n_sample: 3\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key" in err and "n_samples" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        _run(["--n_samples", "0"])


def test_report_renders_in_chromium(trained_run):
    from selenium.webdriver.common.by import By

    browser = start_chromium(trained_run / "chrome-profile", window="1280,2000")
    try:
        browser.get((trained_run / "report.html").as_uri())
        text = browser.find_element(By.TAG_NAME, "body").text
        rows = [json.loads(line) for line in (trained_run / "attributions.jsonl").open()]
        assert rows[0]["ids"]["news_id"] in text
        with (trained_run / "top_words.csv").open() as handle:
            top = [r["word"] for r in csv.DictReader(handle)]
        if top:
            assert top[0] in text
        assert "Words seen at least" in text  # the ranking rule is stated
        assert "ig" in text and "random" in text  # the comparison table
        out = REPO / "output" / "test_artifacts"
        out.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out / "end_to_end_report.png"))
    finally:
        browser.quit()


def test_refused_resume_leaves_the_run_folder_untouched(trained_run, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    run = workdir / "refused"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["--n_epochs", "2", "--n_samples", "12", "--constraint_margin", "0.3"]
    assert _run([*args, "--run_dir", str(run)]) == 2  # other DIFFMASK settings
    assert "other DIFFMASK settings" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
