"""Bad input to the commands (issue 10): corrupt files, unusable output folders, bad values in
YAML, a GPU asked for without one, empty or contradictory data, data integrity and the report's
Content-Security-Policy. Each case runs a command's ``main([...])`` in-process and checks the
exit status, that no traceback is printed, and the message (one ``error:`` line naming the key,
file or folder), or the documented handling of input that is accepted.

One tiny recommender and one DIFFMASK run (2 epochs) are built once for the module."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from attribution_analysis import analyze_diffmask, compare_methods, compare_models
from attribution_analysis import train_recommender as train_cli
from attribution_analysis.data.synthetic import SyntheticConfig
from tests.helpers_foundation import make_corpus, news_line, write_lines

TINY = {"encoder": "tiny-random-bert", "num_heads": 2, "head_dim": 8, "query_dim": 16,
        "fine_tune_layers": 0}  # fmt: skip
SMALL_CORPUS = SyntheticConfig(seed=0, n_news=80, n_users=30, n_impressions=80, n_topics=2,
                               max_interests=1, max_history=8, max_candidates=8)  # fmt: skip
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


# ------------------------------------------------------------------------------- helpers
def _write_yaml(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _rec_config(path: Path, corpus: Path, out: Path, data: dict | None = None,
                train: dict | None = None) -> Path:  # fmt: skip
    """A tiny recommender config over ``corpus`` writing under ``out``."""
    return _write_yaml(path, {
        "data": {"train_dir": str(corpus / "train"), "dev_dir": str(corpus / "dev"),
                 "rationales": None, "cache_dir": str(out / "cache"), "max_title_len": 12,
                 "max_history": 8, "generate_synthetic_if_missing": False, **(data or {})},
        "model": TINY,
        "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "device": "cpu",
                  "output_dir": str(out / "recommender"), "run_name": "default",
                  **(train or {})},
    })  # fmt: skip


def _attr_config(path: Path, rec: dict, out: Path, **overrides) -> Path:
    """A tiny attribution config over the module's recommender, writing under ``out``."""
    diffmask = {"probe": {"probe_type": "simple"},
                "training": {"n_epochs": 2, "convergence": None},
                "train_examples": 16, "val_examples": 8}  # fmt: skip
    return _write_yaml(path, {
        "checkpoint": str(rec["best"]), "model_config": str(rec["config"]),
        "train_recommender_if_missing": False, "n_samples": 6, "batch_size": 8,
        "device": "cpu", "top_k": 3, "output_dir": str(out), "compare_methods": ["diffmask"],
        "ig_steps": 2, "sanity_retrain": False, "diffmask": diffmask, **overrides,
    })  # fmt: skip


def _one_error_line(capsys, *expected: str) -> str:
    """The single ``error:`` line of stderr (no traceback), holding every ``expected`` text."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _analyze(config: Path, *args: str) -> int:
    return analyze_diffmask.main(["--config", str(config), "--quiet", *args])


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit(path: Path, change) -> Path:
    """Rewrite the lines of a UTF-8 file with ``change(lines) -> lines``."""
    return write_lines(path, change(path.read_text(encoding="utf-8").splitlines()))


def _train(config: Path, *args: str) -> int:
    return train_cli.main(["--config", str(config), "--quiet", *args])


class _Touch:
    """A pickle that creates ``path`` when unpickled: code that safe loading must not run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    return make_corpus(work / "corpus", SMALL_CORPUS)


@pytest.fixture(scope="module")
def rec(work, corpus) -> dict:
    """A trained tiny recommender: ``config`` (its YAML), ``run`` and ``best`` folders."""
    config = _rec_config(work / "rec.yaml", corpus, work)
    assert _train(config) == 0
    run = work / "recommender" / "default"
    return {"config": config, "run": run, "best": run / "best"}


@pytest.fixture(scope="module")
def diffmask_run(work, rec) -> dict:
    """A 2-epoch DIFFMASK run folder of ``analyze_diffmask`` and its config."""
    config = _attr_config(work / "attr.yaml", rec, work / "diffmask")
    run = work / "diffmask" / "run"
    assert _analyze(config, "--run_dir", str(run)) == 0
    return {"config": config, "run": run}


# ------------------------------------------------------------------------ corrupt files
def _bad_checkpoint(kind: str, tmp_path: Path, rec: dict, good: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:500])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":  # once printed "error: 101" (the unpickler's KeyError of byte "e")
        path.write_text("hello world\n")
    elif kind == "malicious_pickle":
        path.write_bytes(pickle.dumps(_Touch(tmp_path / "pwned"), protocol=2))
    else:  # a readable torch file that is not a DIFFMASK checkpoint
        shutil.copy(rec["run"] / "checkpoints" / "epoch_1.pt", path)
    return path


@pytest.mark.parametrize("keep", [100, 5000, 0.5, -10])
def test_a_truncated_torch_file_is_named_truncated_or_corrupt(keep, tmp_path):
    """Wherever a file is cut, the one-line reason says so: torch's own error is sometimes
    ``OSError: [Errno 22] Invalid argument`` (a cut after 5,000 bytes of this file)."""
    from attribution_analysis.utils.io import UnreadableFileError, load_torch_file

    full = tmp_path / "full.pt"
    torch.save({"a": torch.randn(1000, 100), "b": 3}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(UnreadableFileError) as exc:
        load_torch_file(cut, "test file")
    assert str(exc.value).startswith(f"{cut}: not a readable test file (truncated or corrupt: ")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "not a readable DIFFMASK checkpoint (truncated or corrupt: RuntimeError: "
                      "PytorchStreamReader"),
        ("empty", "not a readable DIFFMASK checkpoint (the file is empty)"),
        ("text", "not a readable DIFFMASK checkpoint (not a file written by torch.save)"),
        ("malicious_pickle", "not a readable DIFFMASK checkpoint (refused by safe loading: "
                             "Unsupported global: GLOBAL getattr was not an allowed global"),
        ("recommender_checkpoint", "not a DIFFMASK checkpoint (format diffmask/2)"),
    ],
)  # fmt: skip
def test_analyze_refuses_an_unreadable_checkpoint(kind, reason, diffmask_run, rec, tmp_path,
                                                  capsys):  # fmt: skip
    good = diffmask_run["run"] / "checkpoints" / "best.pt"
    bad = _bad_checkpoint(kind, tmp_path, rec, good)
    config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "out")
    assert _analyze(config, "--checkpoint", str(bad), "--skip_training") == 2
    line = _one_error_line(capsys, f"error: {bad}: {reason}")
    assert "weights_only" not in line and "\x1b" not in line  # no advice to load it unsafely
    assert not (tmp_path / "pwned").exists()  # the pickled code never ran
    assert not (tmp_path / "out").exists()  # no run folder for a refused input


def test_compare_methods_refuses_an_unreadable_checkpoint(diffmask_run, rec, tmp_path, capsys):
    bad = _bad_checkpoint("truncated", tmp_path, rec, diffmask_run["run"] / "checkpoints/best.pt")
    config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "out")
    args = ["--config", str(config), "--methods", "diffmask,random", "--checkpoint", str(bad)]
    assert compare_methods.main([*args, "--quiet"]) == 2
    _one_error_line(capsys, str(bad), "not a readable DIFFMASK checkpoint")
    assert not (tmp_path / "out").exists()


def test_compare_methods_runs_diffmask_loo_from_a_checkpoint(diffmask_run, rec, tmp_path, capsys):
    """``--methods diffmask_loo`` alone loads the DIFFMASK it needs (and refuses a bad
    checkpoint as ``diffmask`` does); its row is in the comparison."""
    good = diffmask_run["run"] / "checkpoints/best.pt"
    bad = _bad_checkpoint("truncated", tmp_path, rec, good)
    config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "out")
    args = ["--config", str(config), "--methods", "diffmask_loo", "--checkpoint", str(bad)]
    assert compare_methods.main([*args, "--quiet"]) == 2
    _one_error_line(capsys, str(bad), "not a readable DIFFMASK checkpoint")
    args = ["--config", str(config), "--methods", "diffmask_loo,random", "--checkpoint", str(good)]
    assert compare_methods.main([*args, "--quiet"]) == 0
    (folder,) = (tmp_path / "out").glob("compare_*")
    rows = {r["method"]: r for r in json.loads((folder / "comparison.json").read_text())["rows"]}
    assert set(rows) == {"diffmask_loo", "random"}
    assert math.isfinite(rows["diffmask_loo"]["deletion_auc"])


def test_compare_methods_flags_reach_the_methods(diffmask_run, rec, tmp_path, monkeypatch):
    """``--effect_titles`` and ``--ig_steps`` override the config's values: the effect head is
    fitted on that many titles, IG built with that many steps, and the saved config says so."""
    from attribution_analysis.app import comparison

    limits, steps = [], []
    titles, build = comparison.effect_titles, comparison.build_methods

    def recording_titles(ws, limit, *args, **kwargs):
        limits.append(limit)
        return titles(ws, limit, *args, **kwargs)

    def recording_build(ws, names, diffmask, ig_steps, *args, **kwargs):
        steps.append(ig_steps)
        return build(ws, names, diffmask, ig_steps, *args, **kwargs)

    monkeypatch.setattr(comparison, "effect_titles", recording_titles)
    monkeypatch.setattr(comparison, "build_methods", recording_build)
    config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "out")
    good = diffmask_run["run"] / "checkpoints/best.pt"
    args = ["--config", str(config), "--methods", "diffmask_effect,ig", "--checkpoint", str(good),
            "--effect_titles", "4", "--ig_steps", "3", "--n_samples", "4", "--quiet"]  # fmt: skip
    assert compare_methods.main(args) == 0
    assert limits and set(limits) == {4} and steps and set(steps) == {3}
    (folder,) = (tmp_path / "out").glob("compare_*")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["effect_titles"] == 4 and saved["ig_steps"] == 3


def test_truncated_latest_diffmask_epoch_falls_back_to_the_previous(diffmask_run, tmp_path,
                                                                     capsys):  # fmt: skip
    run = _copy(diffmask_run["run"], tmp_path / "run")
    latest = run / "checkpoints" / "diffmask_epoch_2.pt"
    latest.write_bytes(latest.read_bytes()[:300])  # truncated by a crash
    assert _analyze(diffmask_run["config"], "--run_dir", str(run)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert captured.out.count(f"WARNING: {latest}: not a readable DIFFMASK checkpoint") == 1
    assert "trying the previous epoch" in captured.out
    assert f"resumed from {run / 'checkpoints' / 'diffmask_epoch_1.pt'}" in captured.out
    assert torch.load(latest, weights_only=True)["epoch"] == 2  # epoch 2 trained again


def test_truncated_latest_recommender_epoch_falls_back_to_the_previous(rec, corpus, tmp_path,
                                                                       capsys):  # fmt: skip
    out = tmp_path / "out"
    run = _copy(rec["run"], out / "recommender" / "default")
    latest = run / "checkpoints" / "epoch_2.pt"
    latest.write_bytes((run / "checkpoints" / "epoch_1.pt").read_bytes()[:400])
    config = _rec_config(tmp_path / "r.yaml", corpus, out, data={"cache_dir": str(tmp_path)})
    assert _train(config, "--epochs", "2") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert f"WARNING: {latest}: not a readable recommender training checkpoint" in captured.out
    assert f"resumed from {run / 'checkpoints' / 'epoch_1.pt'}" in captured.out
    assert torch.load(latest, weights_only=True)["epoch"] == 1  # 0-based: epoch 2 written again


def test_truncated_model_safetensors_is_one_line(diffmask_run, rec, tmp_path, capsys):
    best = _copy(rec["best"], tmp_path / "best")
    weights = best / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    config = _attr_config(tmp_path / "a.yaml", {**rec, "best": best}, tmp_path / "out")
    assert _analyze(config, "--n_epochs", "1") == 2
    _one_error_line(capsys, str(weights), "not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_truncated_token_cache_is_rebuilt(rec, corpus, work, tmp_path, capsys):
    out = tmp_path / "out"
    _copy(rec["run"], out / "recommender" / "default")  # its one epoch is done: no training
    cache = _copy(work / "cache", tmp_path / "cache")
    (tokens,) = (cache / "tokens").glob("tokens_*.pt")
    tokens.write_bytes(tokens.read_bytes()[:200])
    config = _rec_config(tmp_path / "r.yaml", corpus, out, data={"cache_dir": str(cache)})
    assert _train(config) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error:" not in captured.err
    assert f"{tokens}: not a readable token cache" in captured.out
    assert "rebuilding it" in captured.out
    assert set(torch.load(tokens, weights_only=True)) == {"news_ids", "input_ids",
                                                          "attention_mask"}  # fmt: skip


# ----------------------------------------------------------------------- output folders
def _unusable_folder(kind: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """A folder the run cannot create or write, the path the error must name (the folder or
    the parent that refuses it) and the reason it must give."""
    if kind == "file":
        blocker = tmp_path / "blocker"
        blocker.write_text("not a folder")
        return blocker, blocker, "Not a directory"
    if kind == "read_only":
        parent = tmp_path / "read_only"
        parent.mkdir()
        parent.chmod(0o555)
        if os.access(parent, os.W_OK):  # root ignores the mode
            parent.chmod(0o755)
            pytest.skip("running as root: a read-only mode does not stop writes")
        return parent / "out", parent, "Permission denied"
    target = Path("/sys/attribution-analysis-test")  # a file system without new folders
    try:
        target.mkdir()
    except OSError:
        return target / "out", target, "Operation not permitted"
    target.rmdir()
    pytest.skip("/sys accepts new folders here")


COMMANDS_WITH_OUTPUT = ["train_recommender", "analyze --output_dir", "analyze --run_dir",
                        "compare_methods --output_dir"]  # fmt: skip


@pytest.mark.parametrize("kind", ["file", "read_only", "not_writable"])
@pytest.mark.parametrize("command", COMMANDS_WITH_OUTPUT)
def test_an_unusable_output_folder_is_one_line(command, kind, rec, corpus, diffmask_run,
                                               tmp_path, capsys):  # fmt: skip
    if (command, kind) == ("train_recommender", "file"):
        pytest.skip("tested in test_cli_errors.py::test_an_output_folder_that_is_a_file")
    folder, named, reason = _unusable_folder(kind, tmp_path)
    try:
        if command == "train_recommender":
            config = _rec_config(tmp_path / "r.yaml", corpus, tmp_path,
                                 train={"output_dir": str(folder)})  # fmt: skip
            code = _train(config)
        else:
            config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "unused")
            flag = command.split()[1]
            best = str(diffmask_run["run"] / "checkpoints" / "best.pt")
            if command.startswith("analyze"):
                code = _analyze(config, flag, str(folder), "--checkpoint", best,
                                "--skip_training")  # fmt: skip
            else:
                code = compare_methods.main(["--config", str(config), "--methods", "random",
                                             flag, str(folder), "--quiet"])  # fmt: skip
    finally:
        if kind == "read_only":
            folder.parent.chmod(0o755)
    assert code == 2
    if command == "analyze --run_dir" and kind == "file":
        reason = "is a file, not a folder"
    _one_error_line(capsys, str(named), reason)
    if kind == "file":
        assert folder.read_text() == "not a folder"
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------- values in YAML
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"n_samples": 0}, "'n_samples'"),
        ({"n_samples": -5}, "'n_samples'"),
        ({"top_k": 0}, "'top_k'"),
        ({"effect_titles": 0}, "'effect_titles'"),
        ({"diffmask": {"training": {"n_epochs": 0}}}, "'diffmask.training.n_epochs'"),
        ({"diffmask": {"objective": {"constraint_margin": float("nan")}}},
         "'diffmask.objective.constraint_margin'"),
    ],
)  # fmt: skip
def test_bad_attribution_values_in_yaml(section, key, rec, tmp_path, capsys):
    config = _attr_config(tmp_path / "a.yaml", rec, tmp_path / "out")
    data = yaml.safe_load(config.read_text())
    for name, value in section.items():  # merge one level down (the diffmask sections)
        data[name] = {**data[name], **value} if isinstance(value, dict) else value
    _write_yaml(config, data)
    run = tmp_path / "run"
    assert _analyze(config, "--run_dir", str(run)) == 2
    _one_error_line(capsys, str(config), key)
    assert not run.exists() and not (tmp_path / "out").exists()
    assert compare_methods.main(["--config", str(config), "--methods", "random"]) == 2
    _one_error_line(capsys, str(config), key)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("data", "train", "key"),
    [
        ({"npratio": 0}, {}, "'data.npratio'"),
        ({"max_history": -1}, {}, "'data.max_history'"),
        ({}, {"max_steps_per_epoch": 0}, "'train.max_steps_per_epoch'"),
        ({}, {"epochs": 0}, "'train.epochs'"),
        ({}, {"epochs": -1}, "'train.epochs'"),
    ],
)
def test_bad_recommender_values_in_yaml(data, train, key, corpus, tmp_path, capsys):
    config = _rec_config(tmp_path / "r.yaml", corpus, tmp_path, data=data, train=train)
    assert _train(config) == 2
    line = _one_error_line(capsys, str(config), key)
    assert "must be" in line
    assert not (tmp_path / "recommender").exists()


@pytest.mark.parametrize(
    ("command", "args", "flag"),
    [
        ("compare_methods", ["--n_samples", "-5"], "--n_samples"),
        ("compare_methods", ["--ig_steps", "0"], "--ig_steps"),
        ("compare_methods", ["--effect_titles", "-3"], "--effect_titles"),
        ("compare_models", ["--n_samples", "0"], "--n_samples"),
        ("train_recommender", ["--epochs", "0"], "--epochs"),
        ("train_recommender", ["--max_steps_per_epoch", "0"], "--max_steps_per_epoch"),
        ("analyze_diffmask", ["--n_samples", "-5"], "--n_samples"),
    ],
)
def test_bad_values_in_flags(command, args, flag, tmp_path, capsys):
    mains = {
        "compare_methods": compare_methods.main,
        "compare_models": compare_models.main,
        "train_recommender": train_cli.main,
        "analyze_diffmask": analyze_diffmask.main,
    }
    with pytest.raises(SystemExit) as exc:  # refused by the parser, before the config is read
        mains[command](["--config", str(tmp_path / "never_read.yaml"), *args])
    assert exc.value.code == 2
    _one_error_line(capsys, f"{command}: error: argument {flag}: must be a positive integer, "
                            f"got {args[1]}")  # fmt: skip


# ------------------------------------------------------------------------------ devices
@NO_GPU
@pytest.mark.parametrize(
    "command", ["train_recommender yaml", "train_recommender --device", "analyze yaml",
                "analyze --device", "compare_methods yaml"]
)  # fmt: skip
def test_cuda_without_a_gpu_is_an_error(command, rec, corpus, tmp_path, capsys):
    in_yaml = command.endswith("yaml")
    out = tmp_path / "out"
    if command.startswith("train_recommender"):
        config = _rec_config(tmp_path / "r.yaml", corpus, out,
                             train={"device": "cuda"} if in_yaml else {})  # fmt: skip
        code = _train(config, *([] if in_yaml else ["--device", "cuda"]))
    else:
        config = _attr_config(tmp_path / "a.yaml", rec, out, device="cuda" if in_yaml else "cpu")
        if command.startswith("analyze"):
            code = _analyze(config, *([] if in_yaml else ["--device", "cuda"]))
        else:
            code = compare_methods.main(["--config", str(config), "--methods", "random"])
    assert code == 2
    _one_error_line(capsys, "device 'cuda' was asked for, but no CUDA GPU is available")
    assert not out.exists()


# ------------------------------------------------------------- empty or contradictory data
@pytest.mark.parametrize("text", ["", "# only a comment\n"])
@pytest.mark.parametrize(
    "main",
    [train_cli.main, analyze_diffmask.main, compare_methods.main, compare_models.main],
    ids=["train_recommender", "analyze_diffmask", "compare_methods", "compare_models"],
)
def test_an_empty_config_file_is_an_error(main, text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default pipeline would write under ./output
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--quiet"]) == 2
    _one_error_line(capsys, str(config), "the config file is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def _no_clicks(lines: list[str]) -> list[str]:
    return [line.replace("-1", "-0") for line in lines]


def _candidate_twice(lines: list[str]) -> list[str]:
    cols = lines[1].split("\t")
    clicked = next(c for c in cols[4].split() if c.endswith("-1"))
    cols[4] += " " + clicked.replace("-1", "-0")
    return [lines[0], "\t".join(cols), *lines[2:]]


def _unlabelled(lines: list[str]) -> list[str]:
    cols = lines[0].split("\t")
    cols[4] = " ".join(c.rsplit("-", 1)[0] for c in cols[4].split())
    return ["\t".join(cols), *lines[1:]]


@pytest.mark.parametrize(
    ("split", "change", "expected"),
    [
        ("train", lambda lines: [], "behaviors.tsv: no clicked candidate (0 impressions)"),
        ("train", _unlabelled, "behaviors.tsv: impression "),
        ("train", _no_clicks, "behaviors.tsv: no clicked candidate ("),
        ("dev", lambda lines: [], "behaviors.tsv: no impression: nothing to evaluate"),
        ("train", _candidate_twice, "behaviors.tsv:2: candidate "),
    ],
    ids=[
        "empty_train",
        "unlabelled_train",
        "no_click",
        "empty_dev",
        "candidate_with_labels_1_and_0",
    ],  # fmt: skip
)
def test_unusable_behaviors_are_one_line(split, change, expected, corpus, tmp_path, capsys):
    data = _copy(corpus, tmp_path / "corpus")
    behaviors = _edit(data / split / "behaviors.tsv", change)
    config = _rec_config(tmp_path / "r.yaml", data, tmp_path)
    assert _train(config) == 2
    line = _one_error_line(capsys, str(behaviors), expected)
    if change is _candidate_twice:
        assert "listed twice with labels 0 and 1" in line
    assert not (tmp_path / "recommender").exists()  # no run folder, no NaN metrics.json


def test_nothing_to_explain_is_one_line(corpus, rec, tmp_path, capsys):
    """An empty dev split given to ``analyze_diffmask`` (whose recommender exists): refused,
    naming the file, before a run folder is written."""
    data = _copy(corpus, tmp_path / "corpus")
    behaviors = _edit(data / "dev" / "behaviors.tsv", lambda lines: [])
    rec_config = _rec_config(tmp_path / "r.yaml", data, tmp_path)
    config = _attr_config(tmp_path / "a.yaml", {**rec, "config": rec_config}, tmp_path / "out")
    assert _analyze(config) == 2
    _one_error_line(capsys, str(behaviors), "nothing to explain (split 'dev')")
    assert not (tmp_path / "out").exists()


def test_a_news_id_repeated_with_another_title_names_both_lines(corpus, tmp_path, capsys):
    data = _copy(corpus, tmp_path / "corpus")
    first = (data / "train" / "news.tsv").read_text(encoding="utf-8").split("\t", 1)[0]
    news = _edit(data / "dev" / "news.tsv", lambda lines: [*lines, news_line(first, "other")])
    n_lines = len(news.read_text(encoding="utf-8").splitlines())
    config = _rec_config(tmp_path / "r.yaml", data, tmp_path)
    assert _train(config) == 2
    _one_error_line(capsys, f"{news}:{n_lines}: news id {first!r} repeated with another title",
                    f"(first at {data / 'train' / 'news.tsv'}:1)")  # fmt: skip


@pytest.fixture(scope="module")
def quirky(work, corpus, rec, diffmask_run) -> dict:
    """Accepted oddities, in one non-strict run: a byte-order mark at the start of the train
    news and the dev behaviors, a news id repeated with another title (counted), a literal
    ``[SEP]`` in a title, and empty titles (nothing to score) among the dev candidates."""
    data = _copy(corpus, work / "quirky")
    dev_rows = (data / "dev" / "behaviors.tsv").read_text(encoding="utf-8").splitlines()
    dev_ids = sorted({c.split("-")[0] for r in dev_rows for c in r.split("\t")[4].split()})
    empty, sep_id = set(dev_ids[::2]), dev_ids[1]

    def retitle(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            cols = line.split("\t")
            if cols[0] in empty:
                cols[3] = ""
            elif cols[0] == sep_id:
                cols[3] = "breaking [SEP] news today"
            out.append("\t".join(cols))
        return out

    for split in ("train", "dev"):
        _edit(data / split / "news.tsv", retitle)
    first = (data / "train" / "news.tsv").read_text(encoding="utf-8").split("\t", 1)[0]
    _edit(data / "dev" / "news.tsv", lambda lines: [*lines, news_line(first, "another title")])
    for path in (data / "train" / "news.tsv", data / "dev" / "behaviors.tsv"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    out = work / "quirky_out"
    config = _rec_config(work / "quirky_rec.yaml", data, out, data={"strict": False})
    attr = _attr_config(work / "quirky_attr.yaml", {**rec, "config": config}, out / "diffmask",
                        n_samples=len(dev_ids) * 2)  # fmt: skip
    run = out / "diffmask" / "run"
    best = diffmask_run["run"] / "checkpoints" / "best.pt"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert _train(config) == 0
        assert _analyze(attr, "--checkpoint", str(best), "--skip_training", "--run_dir",
                        str(run)) == 0  # fmt: skip
    assert "Traceback" not in stderr.getvalue() and "error:" not in stderr.getvalue()
    return {"data": data, "out": out, "run": run, "first": first, "empty": empty,
            "sep_id": sep_id, "dev_rows": dev_rows, "stdout": stdout.getvalue()}  # fmt: skip


def test_a_repeated_news_id_is_counted_when_not_strict(quirky):
    counted = f"1 row(s) skipped: news id {quirky['first']!r} repeated with another title"
    assert f"[data] {counted}" in quirky["stdout"]  # said on screen
    metrics = json.loads((quirky["out"] / "recommender/default/metrics.json").read_text())
    assert counted in metrics["data"]
    assert "NaN" not in json.dumps(metrics)


def _token_table(quirky: dict) -> dict:
    (path,) = (quirky["out"] / "cache" / "tokens").glob("tokens_*.pt")
    return torch.load(path, weights_only=True)


def test_a_byte_order_mark_is_not_part_of_the_first_id(quirky):
    table = _token_table(quirky)
    assert quirky["first"] in table["news_ids"]
    assert not any(n.startswith("\ufeff") for n in table["news_ids"])
    predictions = (quirky["out"] / "recommender/default/prediction.txt").read_text("utf-8")
    assert predictions.split()[0] == quirky["dev_rows"][0].split("\t")[0]


def test_a_literal_sep_in_a_title_stays_text(quirky):
    from tests.helpers_foundation import tiny_tokenizer

    sep = tiny_tokenizer().sep_token_id
    table = _token_table(quirky)
    row = table["input_ids"][table["news_ids"].index(quirky["sep_id"])]
    n_tokens = int(table["attention_mask"][table["news_ids"].index(quirky["sep_id"])].sum())
    assert row[:n_tokens].tolist().count(sep) == 1 and row[n_tokens - 1] == sep  # only the end


def test_titles_without_a_scorable_token_are_reported_and_left_out(quirky):
    summary = json.loads((quirky["run"] / "summary.json").read_text())["test"]
    rows = [json.loads(line) for line in (quirky["run"] / "attributions.jsonl").open()]
    blank = [r for r in rows if r["ids"]["news_id"] in quirky["empty"]]
    assert blank and len(blank) < len(rows)
    assert summary["n_unscorable"] == len(blank)
    assert summary["n_samples"] == len(rows) - len(blank)
    assert 0 <= summary["kept_share"] <= 1
    report = (quirky["run"] / "report.html").read_text(encoding="utf-8")
    assert f'{len(blank)}</div><div class="metric-name">n_unscorable</div>' in report


# -------------------------------------------------------------------------- data integrity
def test_a_refused_resume_leaves_the_run_folder_unchanged(diffmask_run, tmp_path, capsys):
    run = _copy(diffmask_run["run"], tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["--run_dir", str(run), "--constraint_margin", "0.3"]
    assert _analyze(diffmask_run["config"], *args) == 2
    _one_error_line(capsys, "other DIFFMASK settings (constraint_margin)", "use a new run folder")
    assert (run / "config.yaml").read_bytes() == before[run / "config.yaml"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_resume_with_other_learning_rates_is_refused_and_loses_nothing(diffmask_run, tmp_path,
                                                                        capsys):  # fmt: skip
    run = _copy(diffmask_run["run"], tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["--run_dir", str(run), "--n_epochs", "9", "--lr_probe", "0.05"]
    assert _analyze(diffmask_run["config"], *args) == 2
    _one_error_line(capsys, "other training settings (lr_probe: 0.001 there, 0.05 now)",
                    "use a new run folder")  # fmt: skip
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["compare_methods", "analyze_diffmask"])
def test_an_unknown_method_is_refused_before_any_training(command, corpus, tmp_path, capsys):
    rec_config = _rec_config(tmp_path / "r.yaml", corpus, tmp_path)
    missing = {"config": rec_config, "best": tmp_path / "recommender" / "default" / "best"}
    config = _attr_config(tmp_path / "a.yaml", missing, tmp_path / "out",
                          train_recommender_if_missing=True)  # fmt: skip
    if command == "compare_methods":
        code = compare_methods.main(["--config", str(config), "--methods", "diffmask,nosuch"])
    else:
        code = _analyze(config, "--compare", "diffmask,nosuch")
    assert code == 2
    _one_error_line(capsys, "'nosuch'")
    assert not (tmp_path / "recommender").exists() and not (tmp_path / "out").exists()


def test_an_interrupt_names_the_resume_command(diffmask_run, rec, tmp_path, monkeypatch,
                                               capsys):  # fmt: skip
    from attribution_analysis.app import analysis

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "_train", interrupt)
    config = yaml.safe_load(diffmask_run["config"].read_text())
    config["output_dir"] = str(tmp_path / "out")
    config = _write_yaml(tmp_path / "a.yaml", config)
    assert _analyze(config) == 130
    (run,) = (tmp_path / "out").glob("run_*")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    assert f"analyze_diffmask: interrupted; rerun the same command with --run_dir {run} " in err
    assert (run / "config.yaml").is_file()  # the folder to resume exists
    # the next command's interrupt does not inherit that folder
    monkeypatch.setattr(train_cli, "run", interrupt)
    assert _train(rec["config"]) == 130
    err = capsys.readouterr().err
    assert "train_recommender: interrupted; rerun the same command to resume" in err
    assert "--run_dir" not in err


# ----------------------------------------------------------------------------- report
def test_the_report_allows_only_its_own_script(diffmask_run):
    html = (diffmask_run["run"] / "report.html").read_text(encoding="utf-8")
    (csp,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html)
    directives = dict(d.strip().split(" ", 1) for d in csp.replace("&#x27;", "'").split(";"))
    assert directives["default-src"] == "'none'"
    assert "unsafe-inline" not in directives["script-src"]
    assert "unsafe-eval" not in directives["script-src"]
    (script,) = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    assert directives["script-src"] == f"'sha256-{digest}'"
    assert "<script src" not in html and " onclick=" not in html
