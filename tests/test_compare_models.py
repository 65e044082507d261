"""``compare_models`` end to end on tiny recommenders and the poisoned synthetic corpus:
files, columns, the known words read from the corpus, resumption and the report in Chromium."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from attribution_analysis.app.model_comparison import CANDIDATE_COLUMNS, GROUP_COLUMNS
from attribution_analysis.compare_models import main
from attribution_analysis.evaluation.model_diff import WORD_COLUMNS
from tests.helpers_browser import start_chromium

pytestmark = pytest.mark.slow
TINY_MODEL = {"encoder": "tiny-random-bert", "num_heads": 2, "head_dim": 8, "query_dim": 16}


def _configs(root: Path) -> Path:
    for variant in ("clean", "poisoned"):
        rec = {
            "data": {"train_dir": f"data/poison/{variant}/train",
                     "dev_dir": f"data/poison/{variant}/dev",
                     "rationales": f"data/poison/{variant}/rationales.jsonl",
                     "cache_dir": "output/cache", "max_title_len": 20,
                     "synthetic_variant": variant, "generate_synthetic_if_missing": True},
            "model": TINY_MODEL,
            "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 3, "device": "cpu",
                      "output_dir": "output/recommender", "run_name": variant},
        }  # fmt: skip
        (root / f"rec_{variant}.yaml").write_text(yaml.safe_dump(rec))
        attr = {
            "checkpoint": f"output/recommender/{variant}/best",
            "model_config": f"rec_{variant}.yaml",
            "batch_size": 16, "device": "cpu",
            "diffmask": {"probe": {"probe_type": "simple"}, "training": {"n_epochs": 1},
                         "train_examples": 32, "val_examples": 16},
        }  # fmt: skip
        (root / f"attr_{variant}.yaml").write_text(yaml.safe_dump(attr))
    compare = {"model_a": "attr_clean.yaml", "model_b": "attr_poisoned.yaml",
               "n_samples": 24, "min_support": 2, "n_boot": 100, "n_perm": 200,
               "methods": ["diffmask", "leave_one_out", "diffmask_loo", "diffmask_effect"],
               "output_dir": "output/compare"}  # fmt: skip
    (root / "compare.yaml").write_text(yaml.safe_dump(compare))
    return root / "compare.yaml"


def _main_in(root: Path, argv: list[str]) -> int:
    """``compare_models`` run from ``root`` (the configs' relative paths resolve there)."""
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        return main(argv)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    config = _configs(root)
    assert _main_in(root, ["--config", str(config), "--quiet"]) == 0
    (folder,) = (root / "output" / "compare").glob("run_*")
    return root, folder


def _csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_run_folder_holds_every_file_with_its_columns(run) -> None:
    root, folder = run
    for name in ("config.yaml", "summary.json", "report.html", "model_a/attributions.jsonl",
                 "model_b/attributions.jsonl", "model_a/diffmask/checkpoints/best.pt",
                 "model_b/attributions_leave_one_out.jsonl", "words_diff_leave_one_out.csv",
                 "groups_diff_leave_one_out.csv"):  # fmt: skip
        assert (folder / name).is_file(), name
    header, words = _csv(folder / "words_diff.csv")
    assert header == list(WORD_COLUMNS) and words
    assert _csv(folder / "groups_diff.csv")[0] == list(GROUP_COLUMNS)
    header, candidates = _csv(folder / "candidates.csv")
    assert header == list(CANDIDATE_COLUMNS) and len(candidates) == 24
    a = [json.loads(x)["ids"] for x in (folder / "model_a/attributions.jsonl").open()]
    b = [json.loads(x)["ids"] for x in (folder / "model_b/attributions.jsonl").open()]
    assert a == b  # the same candidates, in the same order, under both models
    ranks = [float(w["t"]) for w in words]  # ranked by the paired t statistic (rank_by)
    assert ranks == sorted(ranks, reverse=True)
    assert not list(folder.rglob("*.tmp"))


def test_known_words_are_the_corpus_trigger_words(run) -> None:
    root, folder = run
    summary = json.loads((folder / "summary.json").read_text())
    meta = json.loads((root / "data/poison/poisoned/meta.json").read_text())
    known = summary["known_words"]
    assert known["words"] == meta["poison"]["trigger_words"]
    assert set(known["rank_by_rise"]) == set(known["words"])
    assert summary["n_candidates"] == 24 and 0 <= summary["mean_prob_b"] <= 1
    loo = summary["other_methods"]["leave_one_out"]
    assert set(loo["known_words"]["words"]) == set(known["words"])


def test_diffmask_loo_and_effect_keep_diffmask_kept_shares(run) -> None:
    """``diffmask_loo`` and ``diffmask_effect`` scores are DIFFMASK's keep decision plus a
    signed part in (-0.5, 0.5), so their per-word kept shares under both models are exactly
    DIFFMASK's (the tiny DIFFMASK of one epoch keeps every word: a plumbing check)."""
    _, folder = run
    rows = {r["word"]: r for r in _csv(folder / "words_diff.csv")[1]}
    for method in ("diffmask_loo", "diffmask_effect"):
        loo = {r["word"]: r for r in _csv(folder / f"words_diff_{method}.csv")[1]}
        assert set(loo) == set(rows) and rows
        for word, row in rows.items():
            kept = (loo[word]["kept_a"], loo[word]["kept_b"])
            assert kept == (row["kept_a"], row["kept_b"]), (method, word)
        scores = [s for x in (folder / f"model_b/attributions_{method}.jsonl").open()
                  for s in json.loads(x)["token_scores"]]  # fmt: skip
        assert min(scores) > -0.5 and max(scores) < 1.5


@pytest.mark.parametrize("method", ["diffmask_loo", "diffmask_effect"])
def test_an_input_only_method_on_a_hidden_layer_diffmask_fails_before_training(
    run, tmp_path, capsys, method
) -> None:
    root, _ = run
    attr = yaml.safe_load((root / "attr_poisoned.yaml").read_text())
    attr["diffmask"]["gates"] = {"mask_layer": 1}
    (root / "attr_hidden.yaml").write_text(yaml.safe_dump(attr))
    compare = yaml.safe_load((root / "compare.yaml").read_text())
    compare["model_b"] = "attr_hidden.yaml"
    compare["methods"] = ["diffmask", method]
    (root / "compare_hidden.yaml").write_text(yaml.safe_dump(compare))
    capsys.readouterr()
    argv = ["--config", "compare_hidden.yaml", "--quiet", "--output_dir", str(tmp_path)]
    assert _main_in(root, argv) == 2
    err = capsys.readouterr().err
    assert method in err and "layer 1" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing trained, no run folder


def test_other_tokenizers_are_refused(run, tmp_path, capsys) -> None:
    root, _ = run
    rec = yaml.safe_load((root / "rec_clean.yaml").read_text())
    rec["model"]["tokenizer"] = "bert-base-cased-missing"
    (root / "rec_other.yaml").write_text(yaml.safe_dump(rec))
    attr = yaml.safe_load((root / "attr_clean.yaml").read_text())
    attr["model_config"] = "rec_other.yaml"
    (root / "attr_other.yaml").write_text(yaml.safe_dump(attr))
    cfg = yaml.safe_load((root / "compare.yaml").read_text())
    cfg["model_b"] = "attr_other.yaml"
    (root / "other.yaml").write_text(yaml.safe_dump(cfg))
    assert _main_in(root, ["--config", "other.yaml", "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err


def test_report_section_renders_in_chromium(run) -> None:
    from selenium.webdriver.common.by import By

    _, folder = run
    browser = start_chromium(folder / "chrome-profile", window="1280,2000")
    try:
        browser.get((folder / "report.html").as_uri())
        section = browser.find_element(By.ID, "model-comparison")
        pairs = section.find_elements(By.CLASS_NAME, "pair")
        assert len(pairs) == 24
        text = pairs[0].text.lower()  # the stylesheet capitalises card headings
        assert "model a" in text and "model b" in text and "click probability" in text
        assert "words whose role" in browser.find_element(By.ID, "model-words").text.lower()
        assert not browser.find_elements(By.TAG_NAME, "script")
    finally:
        browser.quit()


def test_included_groups_add_all_their_candidates() -> None:
    from types import SimpleNamespace

    from attribution_analysis.app.model_comparison import _candidates
    from attribution_analysis.config import ModelComparisonConfig
    from attribution_analysis.data.mind import Impression

    impressions = [Impression(str(i), "U1", "", (), (f"N{i}", f"X{i}"), (1, 0)) for i in range(30)]
    news = {f"N{i}": SimpleNamespace(category="news") for i in range(30)}
    news |= {f"X{i}": SimpleNamespace(category="injected") for i in range(30)}
    ws = SimpleNamespace(data=SimpleNamespace(split=lambda name: impressions, news=news))
    plain = _candidates(ModelComparisonConfig(n_samples=10), ws)
    both = _candidates(ModelComparisonConfig(n_samples=10, include_groups=["injected"]), ws)
    assert both[:10] == plain
    injected = {e.news_id for e in both if e.news_id.startswith("X")}
    assert injected == {f"X{i}" for i in range(30)} and len(both) == 10 + 30 - sum(
        e.news_id.startswith("X") for e in plain
    )


def test_diffmask_trains_on_a_share_of_the_included_groups() -> None:
    from types import SimpleNamespace

    from attribution_analysis.app.model_comparison import diffmask_examples
    from attribution_analysis.app.workspace import split_examples
    from attribution_analysis.config import DiffMaskConfig, ModelComparisonConfig
    from attribution_analysis.data.mind import Impression

    # 100 impressions, 5 candidates each: one in 10 candidates is injected (50 of 500)
    impressions = [
        Impression(str(i), "U1", "", (), tuple(f"N{i}_{j}" for j in range(5)), (1, 0, 0, 0, 0))
        for i in range(100)
    ]
    news = {
        f"N{i}_{j}": SimpleNamespace(category="injected" if (5 * i + j) % 10 == 0 else "news")
        for i in range(100)
        for j in range(5)
    }
    config = SimpleNamespace(
        diffmask=DiffMaskConfig(train_examples=100, val_examples=50), seed=3, n_samples=10,
        split="dev",
    )  # fmt: skip
    data = SimpleNamespace(train=impressions, split=lambda name: impressions, news=news)
    ws = SimpleNamespace(config=config, data=data)
    random_train, random_val, _ = split_examples(ws)
    injected = lambda examples: sum(news[e.news_id].category == "injected" for e in examples)  # noqa: E731
    # without include_groups (or with share 0): the random draw, unchanged
    plain = ModelComparisonConfig(group_train_share=0.3)
    assert diffmask_examples(ws, plain) == (random_train, random_val)
    zero = ModelComparisonConfig(include_groups=["injected"], group_train_share=0.0)
    assert diffmask_examples(ws, zero) == (random_train, random_val)
    # share 0.3: 30 of the 100 training examples are injected candidates, the rest random
    config = ModelComparisonConfig(include_groups=["injected"], group_train_share=0.3)
    train, val = diffmask_examples(ws, config)
    assert len(train) == 100 and len(val) == 50 and injected(train) == 30
    assert len({id(e) for e in train} | {id(e) for e in val}) == 150  # disjoint
    assert injected(random_train) < 20  # a random draw holds about 10
    # the share counts the group's first candidates of the seeded draw; too few: all of them
    config.group_train_share = 0.9
    train, _ = diffmask_examples(ws, config)
    assert injected(train) == 50 and len(train) == 100


def test_candidates_from_a_third_data_config(run, capsys) -> None:
    """The control of a poisoning comparison: two clean models explained on the poisoned
    corpus's candidates (``candidates_data``)."""
    root, _ = run
    cfg = yaml.safe_load((root / "compare.yaml").read_text())
    cfg.update(model_b="attr_clean.yaml", candidates_data="rec_poisoned.yaml",
               output_dir="output/control", n_samples=12, methods=["diffmask"])  # fmt: skip
    (root / "control.yaml").write_text(yaml.safe_dump(cfg))
    assert _main_in(root, ["--config", "control.yaml", "--quiet"]) == 0
    (folder,) = (root / "output" / "control").glob("run_*")
    summary = json.loads((folder / "summary.json").read_text())
    meta = json.loads((root / "data/poison/poisoned/meta.json").read_text())
    assert summary["known_words"]["words"] == meta["poison"]["trigger_words"]
    poisoned_dev = (root / "data/poison/poisoned/dev/behaviors.tsv").read_text()
    ids = [json.loads(x)["ids"] for x in (folder / "model_b/attributions.jsonl").open()]
    assert len(ids) == 12 and all(f"\t{i['user_id']}\t" in poisoned_dev for i in ids)


def test_reusing_explanations_recomputes_the_statistics_only(run, tmp_path, capsys) -> None:
    root, folder = run
    config = yaml.safe_load((root / "compare.yaml").read_text())
    other = tmp_path / "compare_diff.yaml"
    other.write_text(yaml.safe_dump({**config, "rank_by": "diff", "min_effect": 0.0}))
    before = {p: p.read_bytes() for p in folder.rglob("*.jsonl")}
    checkpoints = sorted(p.name for p in folder.rglob("*.pt"))
    args = ["--config", str(other), "--run_dir", str(folder), "--quiet", "--reuse_explanations"]
    assert _main_in(root, args) == 0
    assert {p: p.read_bytes() for p in folder.rglob("*.jsonl")} == before  # not re-explained
    assert sorted(p.name for p in folder.rglob("*.pt")) == checkpoints  # nor retrained
    _, words = _csv(folder / "words_diff.csv")
    diffs = [float(w["diff"]) for w in words]
    assert diffs == sorted(diffs, reverse=True)  # now ranked by diff
    significant = [w for w in words if w["significant"] == "True"]
    assert all(float(w["q_value"]) <= 0.05 for w in significant)  # min_effect 0: q alone
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rank_by"] == "diff" and summary["min_effect"] == 0.0
    capsys.readouterr()
    assert main(["--config", str(other), "--quiet", "--reuse_explanations"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "needs the run folder that holds them (--run_dir)" in err


def test_a_resume_with_other_training_settings_for_model_b_changes_no_file(run, capsys) -> None:
    """Both models' run folders are checked before anything is written: model B's DIFFMASK
    with another learning rate is refused before model A's files are rewritten."""
    root, folder = run
    attr = yaml.safe_load((root / "attr_poisoned.yaml").read_text())
    attr["diffmask"]["training"]["lr_probe"] = 0.05
    (root / "attr_poisoned_lr.yaml").write_text(yaml.safe_dump(attr))
    compare = yaml.safe_load((root / "compare.yaml").read_text())
    (root / "compare_lr.yaml").write_text(
        yaml.safe_dump({**compare, "model_b": "attr_poisoned_lr.yaml"})
    )
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _main_in(root, ["--config", "compare_lr.yaml", "--quiet", "--run_dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model_b" in err
    assert "other training settings (lr_probe: 0.001 there, 0.05 now)" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_methods_flag_adds_a_method_to_a_finished_run(run, tmp_path, capsys) -> None:
    """``--methods diffmask`` runs DIFFMASK alone; ``--run_dir`` with ``--methods
    diffmask,leave_one_out`` then adds leave-one-out without retraining either DIFFMASK."""
    root, _ = run
    argv = ["--config", "compare.yaml", "--quiet", "--output_dir", str(tmp_path)]
    assert _main_in(root, [*argv, "--methods", "diffmask"]) == 0
    (folder,) = tmp_path.glob("run_*")
    assert not list(folder.rglob("*leave_one_out*"))
    checkpoints = {p: p.stat().st_mtime_ns for p in folder.rglob("checkpoints/*.pt")}
    before = (folder / "model_b/attributions.jsonl").read_text().splitlines()
    assert _main_in(root, [*argv, "--run_dir", str(folder),
                           "--methods", "diffmask, leave_one_out"]) == 0  # fmt: skip
    assert (folder / "words_diff_leave_one_out.csv").is_file()
    assert (folder / "model_a/attributions_leave_one_out.jsonl").is_file()
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("checkpoints/*.pt")} == checkpoints
    after = (folder / "model_b/attributions.jsonl").read_text().splitlines()
    assert [json.loads(x)["token_scores"] for x in after] == [
        json.loads(x)["token_scores"] for x in before
    ]
    capsys.readouterr()
    assert _main_in(root, [*argv, "--methods", "diffmask,nonsense"]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "leave_one_out" in err
