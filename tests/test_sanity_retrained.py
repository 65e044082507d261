"""The model-randomisation sanity check with DIFFMASK retrained on the randomised model (and the
fixed-probe number beside it), on a tiny random NRMS and a small synthetic corpus."""

from __future__ import annotations

import math

import pytest
import torch

from attribution_analysis.app import comparison
from attribution_analysis.app.analysis import train_for_workspace
from attribution_analysis.app.comparison import (
    SANITY_DIR,
    SANITY_LAYERS,
    build_methods,
    sanity_rows,
)
from attribution_analysis.app.workspace import Workspace, split_examples
from attribution_analysis.config import (
    AttributionConfig,
    DiffMaskConfig,
    DiffMaskTrainingConfig,
    ProbeConfig,
    RecommenderConfig,
)
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.data.synthetic import SyntheticConfig
from attribution_analysis.evaluation.compare import display_rows, markdown_table
from attribution_analysis.evaluation.sanity import (
    fresh_diffmask_like,
    randomize_top_layers,
    sanity_check,
)
from attribution_analysis.methods.diffmask.train_diffmask import rebind_diffmask
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import data_config, make_corpus, tiny_config, tiny_tokenizer

SMALL_CORPUS = SyntheticConfig(
    seed=0,
    n_news=60,
    n_users=20,
    n_impressions=40,
    n_topics=2,
    max_interests=1,
    max_history=5,
    max_candidates=6,
)
NAMES = ["diffmask", "random"]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A workspace, its trained DIFFMASK, the sanity rows, the retrained DIFFMASKs (recorded)
    and the weights of the model and DIFFMASK taken before the check."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sanity_retrained")
    tok = tiny_tokenizer()
    corpus = make_corpus(root / "corpus", SMALL_CORPUS)
    data_cfg = data_config(corpus, root / "cache", max_history=5)
    data = load_mind_data(data_cfg, tok)
    torch.manual_seed(0)
    model = build_nrms(tiny_config(), len(tok)).eval()
    config = AttributionConfig(
        device="cpu",
        batch_size=8,
        n_samples=6,
        seed=0,
        diffmask=DiffMaskConfig(
            probe=ProbeConfig(probe_type="simple"),
            training=DiffMaskTrainingConfig(n_epochs=2),
            train_examples=16,
            val_examples=8,
        ),
    )
    rec = RecommenderConfig(data=data_cfg, model=tiny_config())
    ws = Workspace(config, rec, model, tok, data, encode_news_table(model, data.table))
    diffmask = train_for_workspace(ws, root / "diffmask", quiet=True)
    _, _, test = split_examples(ws)
    model_before, diffmask_before = _state(ws.model), _state(diffmask)

    recorded = []
    original = comparison.retrain_diffmask

    def recording(*args, **kwargs):
        recorded.append(original(*args, **kwargs))
        return recorded[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(comparison, "retrain_diffmask", recording)
    try:
        rows = sanity_rows(ws, NAMES, diffmask, test, out_dir=root / "cmp")
    finally:
        mp.undo()
    yield {
        "ws": ws,
        "diffmask": diffmask,
        "test": test,
        "rows": rows,
        "recorded": recorded,
        "root": root,
        "model_before": model_before,
        "diffmask_before": diffmask_before,
    }
    torch.set_num_threads(threads)


def test_rows_have_both_columns(ran):
    rows = ran["rows"]
    assert set(rows) == set(NAMES)
    dm = rows["diffmask"]
    assert set(dm) == {"sanity_spearman", "sanity_spearman_retrained"}
    assert -1 <= dm["sanity_spearman"] <= 1 and -1 <= dm["sanity_spearman_retrained"] <= 1
    assert dm["sanity_spearman_retrained"] != dm["sanity_spearman"]
    assert rows["random"]["sanity_spearman_retrained"] is None  # no probe to retrain
    assert math.isfinite(rows["random"]["sanity_spearman"])


def test_retrained_diffmask_explains_the_randomised_copy_with_a_new_probe(ran):
    ws, diffmask, recorded = ran["ws"], ran["diffmask"], ran["recorded"]
    assert len(recorded) == 1
    retrained = recorded[0]
    explained = retrained.adapter.model
    assert explained is not ws.model
    expected = randomize_top_layers(ws.model, SANITY_LAYERS, seed=ws.config.seed)
    assert _same(_state(explained), _state(expected))  # the randomised copy itself
    assert not _same(_state(explained), _state(ws.model))
    assert retrained.settings == diffmask.settings
    trained = _state(diffmask.probe)
    new = _state(retrained.probe)
    assert any(not torch.equal(trained[k], new[k]) for k in trained)
    start = _state(fresh_diffmask_like(diffmask, explained, seed=ws.config.seed).probe)
    assert any(not torch.equal(start[k], new[k]) for k in start)  # it was trained
    checkpoints = ran["root"] / "cmp" / SANITY_DIR / "checkpoints"
    assert sorted(checkpoints.glob("diffmask_epoch_*.pt"))


def test_fresh_diffmask_matches_a_fresh_workspace_build(ran):
    ws, diffmask = ran["ws"], ran["diffmask"]
    fresh = fresh_diffmask_like(diffmask, ws.model, seed=ws.config.seed)
    built = ws.build_diffmask()
    assert fresh.settings == built.settings
    assert _same(_state(fresh), _state(built))
    assert fresh.adapter.model is ws.model


def test_fixed_probe_column_is_the_rebound_probe(ran):
    ws, diffmask = ran["ws"], ran["diffmask"]

    def rebound(model):
        dm = rebind_diffmask(diffmask, model)
        return build_methods(ws, ["diffmask"], dm, ws.config.ig_steps, model)["diffmask"]

    expected = sanity_check(
        rebound, ws.model, ws.loader(ran["test"]), n_layers=SANITY_LAYERS, seed=ws.config.seed
    )
    assert ran["rows"]["diffmask"]["sanity_spearman"] == expected["spearman_mean"]


def test_original_model_and_diffmask_unchanged(ran):
    assert _same(_state(ran["ws"].model), ran["model_before"])
    assert _same(_state(ran["diffmask"]), ran["diffmask_before"])
    assert ran["diffmask"].adapter.model is ran["ws"].model


def test_same_seed_same_retrained_numbers(ran, tmp_path):
    again = sanity_rows(ran["ws"], ["diffmask"], ran["diffmask"], ran["test"], out_dir=tmp_path)
    assert again["diffmask"] == ran["rows"]["diffmask"]


def test_table_shows_both_labelled_columns(ran):
    rows = [{"method": name, **ran["rows"][name]} for name in NAMES]
    shown = {r["method"]: r for r in display_rows(rows)}
    value = ran["rows"]["diffmask"]["sanity_spearman_retrained"]
    assert shown["diffmask"]["sanity_spearman_retrained"] == f"{value:.3f}"
    assert shown["random"]["sanity_spearman_retrained"] == "—"
    table = markdown_table(rows)
    assert "`sanity_spearman`: range [-1, 1], lower is better. Sanity (fixed probe)" in table
    assert (
        "`sanity_spearman_retrained`: range [-1, 1], lower is better. Sanity (retrained)" in table
    )


def test_retraining_can_be_switched_off(ran, tmp_path):
    rows = sanity_rows(
        ran["ws"], ["diffmask"], ran["diffmask"], ran["test"], out_dir=tmp_path, retrain=False
    )
    assert rows["diffmask"]["sanity_spearman_retrained"] is None
    assert rows["diffmask"]["sanity_spearman"] == ran["rows"]["diffmask"]["sanity_spearman"]
    assert not (tmp_path / "sanity_diffmask").exists()


def test_effect_titles_leave_out_the_excluded_news(ran):
    """``effect_titles(exclude=...)``: every train-split title but the excluded ones (the news
    benchmark's ``--effect_unseen`` leaves out the held-out candidates' titles this way)."""
    ws = ran["ws"]
    shown = {n for imp in ws.data.train for n in (*imp.history, *imp.candidates)}
    excluded = {ex.news_id for ex in ran["test"]} & shown
    limit = ws.config.effect_titles
    assert excluded and len(shown) <= limit

    def rows(batches):
        return sorted(
            tuple(r[m.bool()].tolist()) for ids, mask in batches for r, m in zip(ids, mask)
        )

    everything = rows(comparison.effect_titles(ws, limit))
    kept = rows(comparison.effect_titles(ws, limit, exclude=excluded))
    table = ws.data.table
    gone = rows([table.rows(torch.tensor(table.lookup(sorted(excluded))))])
    assert len(everything) == len(shown) and len(kept) == len(shown) - len(excluded)
    assert sorted(kept + gone) == everything
    with pytest.raises(ValueError, match="no train-split title is left"):
        comparison.effect_titles(ws, limit, exclude=shown)
    # a smaller limit: a seeded sample of exactly that many of them, the same each time
    few = rows(comparison.effect_titles(ws, 5))
    assert len(few) == 5 and set(few) <= set(everything)
    assert few == rows(comparison.effect_titles(ws, 5))
