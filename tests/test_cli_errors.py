"""Bad input at the command line: one ``error:`` line and exit status 2, never a traceback;
``--debug`` shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attribution_analysis import train_recommender as cli
from tests.helpers_foundation import make_corpus

TINY = {"encoder": "tiny-random-bert", "num_heads": 2, "head_dim": 8, "query_dim": 16,
        "fine_tune_layers": 0}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _config(path: Path, data: dict, out: Path) -> Path:
    config = {
        "data": {"rationales": None, "cache_dir": str(out / "cache"), "max_title_len": 16,
                 **data},
        "model": TINY,
        "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2, "device": "cpu",
                  "output_dir": str(out / "runs")},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1, err
    return lines[0]


def test_a_mistyped_data_path_gets_no_corpus(tmp_path, capsys) -> None:
    typo = tmp_path / "data" / "synthtic"
    path = _config(tmp_path / "c.yaml", {"train_dir": str(typo / "train"),
                                         "dev_dir": str(typo / "dev")}, tmp_path)  # fmt: skip
    assert cli.main(["--config", str(path), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "behaviors.tsv not found" in line and "generate_synthetic_if_missing: true" in line
    assert not typo.exists()


def test_an_output_folder_that_is_a_file(corpus, tmp_path, capsys) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    path = _config(tmp_path / "c.yaml", {"train_dir": str(corpus / "train"),
                                         "dev_dir": str(corpus / "dev")}, tmp_path)  # fmt: skip
    assert cli.main(["--config", str(path), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert str(blocker) in line
    assert blocker.read_text() == "not a folder"


def test_debug_shows_the_traceback(corpus, tmp_path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    path = _config(tmp_path / "c.yaml", {"train_dir": str(corpus / "train"),
                                         "dev_dir": str(corpus / "dev")}, tmp_path)  # fmt: skip
    with pytest.raises(OSError):
        cli.main(["--config", str(path), "--quiet", "--debug"])
