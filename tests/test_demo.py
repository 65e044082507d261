"""The demo command on the tiny model: it says what it changes (the fixed-probe sanity check,
IG's integration steps, DIFFMASK's epoch cap, ``diffmask_loo`` left out), runs the IG
comparison with its own step count and DIFFMASK with its own cap, and writes the report; a
config with fewer IG steps or epochs keeps them."""

from __future__ import annotations

import json

import pytest
import yaml

from attribution_analysis import demo
from attribution_analysis.app import comparison
from attribution_analysis.app.comparison import build_methods
from attribution_analysis.demo import DEMO_IG_STEPS, main
from tests.helpers_foundation import copy_tiny_configs, single_thread

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def _run_demo(
    root, ig_steps: int, capsys, monkeypatch, n_epochs: int = 1, methods=None
) -> tuple[str, dict, list[int], dict, list[str]]:
    """Run the demo from ``root`` on the tiny config with ``ig_steps``, ``n_epochs`` and the
    comparison's ``methods`` (default: the config's): its output, the IG row of the comparison
    it wrote, the IG step counts the comparison built its methods with, the run's summary and
    the methods compared."""
    copy_tiny_configs(root)
    monkeypatch.chdir(root)
    steps: list[int] = []

    def recording(ws, names, diffmask, ig_steps, *args, **kwargs):
        steps.append(ig_steps)
        return build_methods(ws, names, diffmask, ig_steps, *args, **kwargs)

    monkeypatch.setattr(comparison, "build_methods", recording)
    config_path = root / "configs/attribution/tiny_test.yaml"
    raw = yaml.safe_load(config_path.read_text())
    raw.update(ig_steps=ig_steps, sanity_retrain=True, n_samples=8)
    if methods is not None:
        raw["compare_methods"] = methods
    raw["diffmask"]["training"]["n_epochs"] = n_epochs
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["--config", "configs/attribution/tiny_test.yaml", "--quiet"]) == 0
    out = capsys.readouterr().out
    (run,) = sorted((root / "output/test_tiny/diffmask").glob("run_*"))
    assert (run / "report.html").is_file()
    rows = json.loads((run / "comparison/comparison.json").read_text())["rows"]
    summary = json.loads((run / "summary.json").read_text())
    ig = next(r for r in rows if r["method"] == "ig")
    return out, ig, steps, summary, [r["method"] for r in rows]


def test_demo_uses_its_ig_steps_and_epoch_cap_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_DIFFMASK_EPOCHS", 2)
    out, ig, steps, summary, methods = _run_demo(
        tmp_path / "many", DEMO_IG_STEPS + 30, capsys, monkeypatch, n_epochs=5
    )
    assert "diffmask_loo" not in methods and "diffmask_effect" in methods
    assert "diffmask_loo (DIFFMASK's kept set in exact leave-one-out order" in out
    assert "DIFFMASK trains for at most 2 epochs instead of the config's cap of 5" in out
    assert summary["training"]["epochs"] == 2 and not summary["training"]["converged"]
    assert steps and set(steps) == {DEMO_IG_STEPS}  # the comparison and the sanity check
    assert f"Integrated Gradients with {DEMO_IG_STEPS} integration steps" in out
    assert f"instead of the config's {DEMO_IG_STEPS + 30}" in out
    assert "the sanity check keeps DIFFMASK's probe fixed" in out
    assert "[demo] finished in" in out
    assert ig["sanity_spearman_retrained"] is None  # the demo skips the retrained check
    # a config with fewer steps keeps its own, silently
    out, _, steps, summary, methods = _run_demo(
        tmp_path / "few", DEMO_IG_STEPS - 12, capsys, monkeypatch, methods=["diffmask", "ig"]
    )
    assert methods == ["diffmask", "ig"] and "diffmask_loo" not in out
    assert steps and set(steps) == {DEMO_IG_STEPS - 12}
    assert "Integrated Gradients with" not in out
    assert "DIFFMASK trains for at most" not in out and summary["training"]["epochs"] == 1
