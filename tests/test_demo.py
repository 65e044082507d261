"""The demo command on the tiny model: it says what it changes (the fixed-probe sanity check,
IG's integration steps, DIFFMASK's epoch cap, ``diffmask_loo`` left out, the effect head's
titles), runs the IG comparison with its own step count, DIFFMASK with its own cap and
``diffmask_effect``'s head on its own number of titles, and writes the report; a config with
fewer IG steps, epochs or titles keeps them."""

from __future__ import annotations

import json

import pytest
import yaml

from attribution_analysis import demo
from attribution_analysis.app import comparison
from attribution_analysis.app.comparison import build_methods, effect_titles
from attribution_analysis.demo import DEMO_IG_STEPS, main
from tests.helpers_foundation import copy_tiny_configs, single_thread

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def _run_demo(
    root, ig_steps: int, capsys, monkeypatch, n_epochs: int = 1, methods=None, titles=None
) -> tuple[str, dict, list[int], dict, list[str], list[int]]:
    """Run the demo from ``root`` on the tiny config with ``ig_steps``, ``n_epochs``, the
    comparison's ``methods`` (default: the config's) and ``effect_titles`` ``titles`` (default:
    the config's): its output, the IG row of the comparison it wrote, the IG step counts the
    comparison built its methods with, the run's summary, the methods compared and the title
    limits the effect head was fitted with."""
    copy_tiny_configs(root)
    monkeypatch.chdir(root)
    steps: list[int] = []
    limits: list[int] = []

    def recording(ws, names, diffmask, ig_steps, *args, **kwargs):
        steps.append(ig_steps)
        return build_methods(ws, names, diffmask, ig_steps, *args, **kwargs)

    def recording_titles(ws, limit, *args, **kwargs):
        limits.append(limit)
        return effect_titles(ws, limit, *args, **kwargs)

    monkeypatch.setattr(comparison, "build_methods", recording)
    monkeypatch.setattr(comparison, "effect_titles", recording_titles)
    config_path = root / "configs/attribution/tiny_test.yaml"
    raw = yaml.safe_load(config_path.read_text())
    raw.update(ig_steps=ig_steps, sanity_retrain=True, n_samples=8)
    if titles is not None:
        raw["effect_titles"] = titles
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
    return out, ig, steps, summary, [r["method"] for r in rows], limits


def test_demo_uses_its_ig_steps_and_epoch_cap_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_DIFFMASK_EPOCHS", 2)
    monkeypatch.setattr(demo, "DEMO_EFFECT_TITLES", 7)
    out, ig, steps, summary, methods, limits = _run_demo(
        tmp_path / "many", DEMO_IG_STEPS + 30, capsys, monkeypatch, n_epochs=5
    )
    assert limits and set(limits) == {7}  # the comparison's head (the sanity check reuses it)
    assert "effect head is fitted on 7 train titles instead of the config's 3000" in out
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
    # a config with fewer steps or titles keeps its own, silently
    few = ["diffmask", "diffmask_effect", "ig"]
    out, _, steps, summary, methods, limits = _run_demo(
        tmp_path / "few", DEMO_IG_STEPS - 12, capsys, monkeypatch, methods=few, titles=5
    )
    assert set(limits) == {5} and "effect head is fitted" not in out
    assert methods == few and "diffmask_loo" not in out
    assert steps and set(steps) == {DEMO_IG_STEPS - 12}
    assert "Integrated Gradients with" not in out
    assert "DIFFMASK trains for at most" not in out and summary["training"]["epochs"] == 1
