"""The demo command on the tiny model: it says what it changes (the fixed-probe sanity check,
IG's integration steps), runs the IG comparison with its own step count, and writes the report;
a config with fewer IG steps keeps them."""

from __future__ import annotations

import json

import pytest
import yaml

from attribution_analysis.app import comparison
from attribution_analysis.app.comparison import build_methods
from attribution_analysis.demo import DEMO_IG_STEPS, main
from tests.helpers_foundation import copy_tiny_configs, single_thread

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def _run_demo(root, ig_steps: int, capsys, monkeypatch) -> tuple[str, dict, list[int]]:
    """Run the demo from ``root`` on the tiny config with ``ig_steps``: its output, the IG row of
    the comparison it wrote, and the IG step counts the comparison built its methods with."""
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
    raw["diffmask"]["training"]["n_epochs"] = 1
    config_path.write_text(yaml.safe_dump(raw))
    assert main(["--config", "configs/attribution/tiny_test.yaml", "--quiet"]) == 0
    out = capsys.readouterr().out
    (run,) = sorted((root / "output/test_tiny/diffmask").glob("run_*"))
    assert (run / "report.html").is_file()
    rows = json.loads((run / "comparison/comparison.json").read_text())["rows"]
    return out, next(r for r in rows if r["method"] == "ig"), steps


def test_demo_uses_its_ig_steps_and_says_so(tmp_path, capsys, monkeypatch):
    out, ig, steps = _run_demo(tmp_path / "many", DEMO_IG_STEPS + 30, capsys, monkeypatch)
    assert steps and set(steps) == {DEMO_IG_STEPS}  # the comparison and the sanity check
    assert f"Integrated Gradients with {DEMO_IG_STEPS} integration steps" in out
    assert f"instead of the config's {DEMO_IG_STEPS + 30}" in out
    assert "the sanity check keeps DIFFMASK's probe fixed" in out
    assert "[demo] finished in" in out
    assert ig["sanity_spearman_retrained"] is None  # the demo skips the retrained check
    # a config with fewer steps keeps its own, silently
    out, _, steps = _run_demo(tmp_path / "few", DEMO_IG_STEPS - 12, capsys, monkeypatch)
    assert steps and set(steps) == {DEMO_IG_STEPS - 12}
    assert "Integrated Gradients with" not in out
