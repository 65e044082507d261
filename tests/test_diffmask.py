"""DIFFMASK on tiny models: frozen explained model, padding, batching, resume, a known answer,
the classifier adapter, checkpoints refused for other models, NaN handling, bounded lambda."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from attribution_analysis.config import DiffMaskTrainingConfig
from attribution_analysis.data.explanation_set import ExplanationSet, select_examples
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.checkpoint import training_record
from attribution_analysis.methods.diffmask.train_diffmask import (
    TrainingDiverged,
    extract_attributions_diffmask,
    load_diffmask_checkpoint,
    train_diffmask,
)
from attribution_analysis.methods.explained_model import BinaryLogitModel, ModelOutput
from attribution_analysis.methods.result import AttributionResult, read_results_jsonl
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.models.serialization import build_nrms
from tests.helpers_foundation import (
    data_config,
    make_corpus,
    single_thread,
    tiny_config,
    tiny_tokenizer,
)


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    corpus = make_corpus(root / "corpus")
    tok = tiny_tokenizer()
    data = load_mind_data(data_config(corpus, root / "cache"), tok)
    torch.manual_seed(0)
    model = build_nrms(tiny_config(), len(tok)).eval()
    vectors = encode_news_table(model, data.table)
    return tok, data, model, vectors


def _loader(setup, n, seed=0, batch_size=8, shuffle=False):
    tok, data, model, vectors = setup
    ds = ExplanationSet(select_examples(data.train, n, seed=seed), data.table, vectors)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate)


def _diffmask(setup, **kw):
    tok, _, model, _ = setup
    torch.manual_seed(0)
    return DIFFMASK(
        model,
        special_token_ids=tok.all_special_ids,
        mask_token_id=tok.mask_token_id,
        pad_token_id=tok.pad_token_id,
        **kw,
    )


def _attr(dm, batch):
    return dm.get_attributions(
        batch["input_ids"], batch["attention_mask"], batch["history_emb"], batch["history_mask"]
    )


def test_model_weights_unchanged_and_lambda_bounded(setup, tmp_path):
    model = setup[2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    dm = _diffmask(setup, probe_type="layerwise", lambda_max=3.0)
    history = train_diffmask(
        dm,
        _loader(setup, 32, shuffle=True),
        n_epochs=2,
        lr_lambda=5.0,
        output_dir=tmp_path,
        quiet=True,
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(0.0 <= s["lambda"] <= 3.0 for s in history.steps)
    assert not model.training


def test_padding_and_special_tokens_score_zero(setup):
    dm = _diffmask(setup, probe_type="layerwise").eval()
    batch = next(iter(_loader(setup, 8)))
    scores = _attr(dm, batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (scores[mask == 0] == 0).all()
    special = torch.isin(ids, torch.tensor(setup[0].all_special_ids))
    assert (scores[special] == 0).all()
    assert (scores[~special & mask.bool()] > 0).all()


def test_batched_and_one_by_one_agree(setup):
    dm = _diffmask(setup, probe_type="layerwise").eval()
    batch = next(iter(_loader(setup, 8)))
    full = _attr(dm, batch)
    for i in range(len(full)):
        n = int(batch["attention_mask"][i].sum())
        h = int(batch["history_mask"][i].sum())
        one = dm.get_attributions(
            batch["input_ids"][i : i + 1, :n],
            batch["attention_mask"][i : i + 1, :n],
            batch["history_emb"][i : i + 1, : max(h, 1)],
            batch["history_mask"][i : i + 1, : max(h, 1)],
        )
        torch.testing.assert_close(one[0], full[i, :n], atol=1e-5, rtol=0)


def test_resume_equals_uninterrupted(setup, tmp_path):
    def run(out, epochs):
        dm = _diffmask(setup, probe_type="simple")
        torch.manual_seed(0)
        train_diffmask(
            dm,
            _loader(setup, 24, shuffle=True),
            n_epochs=epochs,
            output_dir=out,
            quiet=True,
            val_loader=_loader(setup, 8, seed=1),
        )
        return dm

    full = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)  # "interrupted" after epoch 1
    resumed = run(tmp_path / "b", 3)
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(v, w, atol=0, rtol=0, msg=k)
    assert (tmp_path / "b" / "checkpoints" / "diffmask_epoch_3.pt").is_file()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lr_probe": 5e-2}, "lr_probe: 0.001 there, 0.05 now"),
        ({"seed": 1}, "seed: 0 there, 1 now"),
        ({"batch_size": 4}, "train_batch_size: 8 there, 4 now"),
        ({"n": 12}, "train_examples: 16 there, 12 now, train_ids: "),
        ({"data_seed": 3}, "other training settings (train_ids: "),
    ],
)
def test_resume_with_other_training_settings_is_refused(setup, tmp_path, capsys, change, named):
    """A resumed run continues the folder's optimizer, scheduler, shuffles and examples: other
    learning rates, another seed, batch size or other examples are refused with the values, the
    folder untouched; a longer cap resumes (and says so)."""

    def run(epochs, n=16, batch_size=8, data_seed=0, **kw):
        dm = _diffmask(setup, probe_type="simple")
        loader = _loader(setup, n, seed=data_seed, batch_size=batch_size)
        return train_diffmask(dm, loader, n_epochs=epochs, output_dir=tmp_path, quiet=True,
                              convergence=None, **kw)  # fmt: skip

    run(1)
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    capsys.readouterr()
    with pytest.raises(ValueError, match=re.escape(named)) as exc:
        run(2, **change)
    assert "other training settings" in str(exc.value) and "new run folder" in str(exc.value)
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
    assert len(run(2).epochs) == 2  # n_epochs may change:
    assert "resumed from" in capsys.readouterr().out  # epoch 1 was not trained again
    assert (ckpts / "diffmask_epoch_1.pt").read_bytes() == before["diffmask_epoch_1.pt"]


def test_the_training_record_holds_plain_numbers():
    """numpy hyper-parameters would make every checkpoint unreadable by safe loading."""
    import numpy as np

    training = dataclasses.replace(
        DiffMaskTrainingConfig(), lr_probe=np.float64(1e-3), warmup_steps=np.int64(5)
    )
    record = training_record(training, np.int64(0), [], None)
    assert type(record["lr_probe"]) is float and type(record["warmup_steps"]) is int
    assert type(record["seed"]) is int
    assert record["train_examples"] is None and record["val_ids"] is None  # a plain list


def test_a_checkpoint_without_a_training_record_still_resumes(setup, tmp_path, capsys):
    loader = _loader(setup, 16)
    dm = _diffmask(setup, probe_type="simple")
    train_diffmask(dm, loader, n_epochs=1, output_dir=tmp_path, quiet=True)
    path = tmp_path / "checkpoints" / "diffmask_epoch_1.pt"
    blob = torch.load(path, weights_only=True)
    assert blob["training"] == training_record(DiffMaskTrainingConfig(), 0, loader, None)
    assert blob["training"]["train_examples"] == 16 and blob["training"]["train_ids"]
    del blob["training"]  # as written before the record existed
    torch.save(blob, path)
    capsys.readouterr()
    history = train_diffmask(_diffmask(setup, probe_type="simple"), _loader(setup, 16),
                             n_epochs=2, lr_probe=5e-2, output_dir=tmp_path, quiet=True,
                             convergence=None)  # fmt: skip
    assert len(history.epochs) == 2 and "resumed from" in capsys.readouterr().out


def test_checkpoint_roundtrip_and_foreign_model_refused(setup, tmp_path):
    tok, _, model, _ = setup
    dm = _diffmask(setup, probe_type="simple")
    train_diffmask(dm, _loader(setup, 16), n_epochs=1, output_dir=tmp_path, quiet=True)
    path = tmp_path / "checkpoints" / "diffmask_epoch_1.pt"
    loaded = load_diffmask_checkpoint(path, model)
    batch = next(iter(_loader(setup, 8)))
    torch.testing.assert_close(_attr(loaded, batch), _attr(dm.eval(), batch))

    torch.manual_seed(123)
    other = build_nrms(tiny_config(), len(tok)).eval()  # same architecture, other weights
    with pytest.raises(ValueError, match="other model weights"):
        load_diffmask_checkpoint(path, other)
    wider = build_nrms(tiny_config(tiny_hidden_size=48), len(tok)).eval()
    with pytest.raises(ValueError, match="hidden size 32"):
        load_diffmask_checkpoint(path, wider)
    clf = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    with pytest.raises(ValueError, match="explains a 'nrms' model"):
        load_diffmask_checkpoint(path, clf)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup, tmp_path, monkeypatch):
    dm = _diffmask(setup, probe_type="simple")
    loader = _loader(setup, 16)
    train_diffmask(dm, loader, n_epochs=1, output_dir=tmp_path, quiet=True)
    real = dm.adapter.divergence

    def broken(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(dm.adapter, "divergence", broken)
    with pytest.raises(TrainingDiverged, match="diffmask_epoch_1.pt"):
        train_diffmask(dm, loader, n_epochs=2, output_dir=tmp_path, quiet=True)
    assert not (tmp_path / "checkpoints" / "diffmask_epoch_2.pt").exists()
    blob = torch.load(tmp_path / "checkpoints" / "diffmask_epoch_1.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in blob["state"].values())


def test_readouts_and_keep_probability_closed_form(setup):
    dm = _diffmask(setup, probe_type="layerwise").eval()
    batch = next(iter(_loader(setup, 4)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    keep = _attr(dm, batch)
    words = dm.adapter.embed(ids)
    ctx = {"history_emb": batch["history_emb"], "history_mask": batch["history_mask"]}
    hidden = dm.adapter.forward(words, mask, ctx, output_hidden_states=True).hidden_states
    assert dm.settings["probe_context"] == "user"  # the default on NRMS: the probe reads the user
    user = dm.adapter.context_vector(dm.adapter.prepare_context(ctx))  # [batch, user dim]
    log_alpha = dm.probe.log_alpha(hidden, context=user)
    gamma, zeta, beta = -0.1, 1.1, 2 / 3
    expected = torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta)).prod(0)
    scorable = dm.scorable_mask(ids, mask)
    torch.testing.assert_close(keep[scorable], expected[scorable], atol=1e-6, rtol=1e-5)
    det = dm.get_attributions(ids, mask, **ctx, readout="deterministic")
    assert ((det >= 0) & (det <= 1)).all()
    with pytest.raises(ValueError, match="readout"):
        dm.get_attributions(ids, mask, **ctx, readout="nope")


def test_extraction_streams_results_to_jsonl(setup, tmp_path):
    tok = setup[0]
    dm = _diffmask(setup, probe_type="simple")
    out = tmp_path / "attr.jsonl"
    results = extract_attributions_diffmask(
        dm, _loader(setup, 20), n_samples=13, tokenizer=tok, output_path=out, quiet=True
    )
    assert len(results) == 13
    back = read_results_jsonl(out)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in results]
    r = results[0]
    assert r.tokens[0] == "[CLS]" and r.token_scores[0] == 0.0
    assert set(r.ids) >= {"impression_id", "user_id", "news_id"}
    assert r.metadata["method"] == "diffmask" and "torch" in r.metadata["versions"]
    assert AttributionResult.from_json(r.to_json()) == r
    none_kept = extract_attributions_diffmask(
        dm,
        _loader(setup, 20),
        n_samples=5,
        tokenizer=tok,
        output_path=tmp_path / "b.jsonl",
        return_results=False,
        quiet=True,
    )
    assert none_kept == [] and len((tmp_path / "b.jsonl").read_text().splitlines()) == 5


def test_hidden_state_mode_probes_never_read_above_masked_layer(setup):
    dm = _diffmask(setup, probe_type="layerwise", mask_layer=1)
    assert dm.settings["num_probe_layers"] == 2
    with pytest.raises(ValueError, match="above the masked one"):
        _diffmask(setup, probe_type="layerwise", mask_layer=1, num_probe_layers=3)
    with pytest.raises(ValueError, match="above the masked one"):
        _diffmask(setup, probe_type="simple", mask_layer=1, probe_layer=2)
    batch = next(iter(_loader(setup, 4)))
    dm.train()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ctx = {"history_emb": batch["history_emb"], "history_mask": batch["history_mask"]}
    step = dm.step(ids, mask, ctx)
    assert step.divergence.shape == (4,) and torch.isfinite(step.divergence).all()


# ---------------------------------------------------------------- a model with a known answer
class KeyTokenModel(BinaryLogitModel):
    """Logit = 6 * (number of KEY tokens) - 3 over one-hot word embeddings: only KEY matters."""

    name = "key_token"
    KEY = 3

    def __init__(self) -> None:
        super().__init__(nn.Embedding.from_pretrained(torch.eye(8)))

    hidden_size = 8
    num_layers = 1

    def embed(self, input_ids):
        return self.model(input_ids)

    def forward(
        self, word_embeddings, attention_mask, context, output_hidden_states=False, edit=None
    ):
        x = word_embeddings * attention_mask[..., None]
        logit = 6.0 * x[..., self.KEY].sum(-1) - 3.0
        hidden = (word_embeddings, word_embeddings) if output_hidden_states else None
        return ModelOutput(logit, hidden)


def test_learns_to_keep_exactly_the_decisive_token(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 8, (64, 6), generator=g)
    ids[torch.arange(64), torch.randint(0, 6, (64,), generator=g)] = KeyTokenModel.KEY
    batches = [
        {"input_ids": ids[i : i + 16], "attention_mask": torch.ones(16, 6, dtype=torch.long)}
        for i in range(0, 64, 16)
    ]
    dm = DIFFMASK(
        KeyTokenModel(),
        probe_type="simple",
        baseline_init="zeros",
        learn_baseline=False,
        constraint_margin=0.05,
    )
    train_diffmask(
        dm,
        batches,
        n_epochs=60,
        lr_probe=3e-2,
        lr_lambda=0.1,
        output_dir=tmp_path,
        quiet=True,
        save_checkpoints=False,
    )
    scores = dm.get_attributions(ids, torch.ones_like(ids), readout="deterministic")
    is_key = ids == KeyTokenModel.KEY
    assert (scores[is_key] == 1).all(), scores[is_key]
    assert (scores[~is_key] == 0).all(), scores[~is_key].max()


# ---------------------------------------------------------------- the classifier adapter
def test_sequence_classifier_adapter(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=32,
    )
    clf = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 40, (12, 7))
    mask = torch.ones_like(ids)
    mask[:4, 5:] = 0
    batches = [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4]} for i in (0, 4, 8)]
    dm = DIFFMASK(clf, hidden_dim=16, probe_type="layerwise", special_token_ids=[0, 1, 2])
    assert dm.settings["divergence"] == "categorical_kl"
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    history = train_diffmask(dm, batches, n_epochs=2, output_dir=tmp_path, quiet=True)
    assert len(history.steps) == 6
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items())
    scores = dm.get_attributions(ids, mask)
    assert scores.shape == (12, 7) and (scores[:4, 5:] == 0).all()
    results = dm.explain(ids[:2], mask[:2], {})
    assert 0 <= results[0].original_output <= 1 and results[0].divergence >= 0
    with pytest.raises(ValueError, match="hidden size"):
        DIFFMASK(clf, hidden_dim=32)
    loaded = load_diffmask_checkpoint(tmp_path / "checkpoints" / "diffmask_epoch_2.pt", clf)
    torch.testing.assert_close(loaded.get_attributions(ids, mask), scores)
    assert json.loads((tmp_path / "training_history.json").read_text())["epochs"]


def test_attributions_read_the_same_hidden_states_as_the_full_forward(setup):
    """``get_attributions`` skips the recommender's head and user vector: the PLM states it
    reads equal those of the full forward, and its scores equal the explanation's."""
    dm = _diffmask(setup).eval()
    batch = next(iter(_loader(setup, 8)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ctx = {"history_emb": batch["history_emb"], "history_mask": batch["history_mask"]}
    adapter = dm.adapter
    words = adapter.embed(ids)
    with torch.no_grad():
        full = adapter.forward(words, mask, ctx, output_hidden_states=True).hidden_states
        fast = adapter.hidden_states(words, mask, ctx)
    assert len(fast) == len(full) == adapter.num_layers + 1
    for a, b in zip(fast, full):
        assert torch.equal(a, b)
    explained = dm.explain(ids, mask, ctx)
    scores = dm.get_attributions(ids, mask, **ctx)
    for i, r in enumerate(explained):
        n = int(mask[i].sum())
        assert r.token_scores == pytest.approx(scores[i, :n].tolist(), abs=1e-6)


def test_a_checkpoint_from_before_the_lambda_floor_loads_without_one(setup, tmp_path):
    """Checkpoints written before ``lambda_min`` existed were trained without a floor: they
    load with ``lambda_min = 0`` (even with ``lambda_init = 0``), and resuming such a run with
    the floor is refused as other settings. The same for ``probe_context`` (title-only
    before it existed; resuming with the default ``auto``, per-user on NRMS, is refused with
    the setting that resumes it)."""
    tok, _, model, _ = setup
    dm = _diffmask(setup, probe_type="simple", lambda_min=0.0, lambda_init=0.0,
                   delivered_constraint=False, probe_context="none")  # fmt: skip
    train_diffmask(dm, _loader(setup, 16), n_epochs=1, output_dir=tmp_path, quiet=True)
    path = tmp_path / "checkpoints" / "diffmask_epoch_1.pt"
    blob = torch.load(path, weights_only=True)
    del blob["settings"]["lambda_min"]
    del blob["settings"]["delivered_constraint"]
    del blob["settings"]["hinge_ratio"]
    del blob["settings"]["probe_context"]
    torch.save(blob, path)
    loaded = load_diffmask_checkpoint(path, model)
    assert loaded.settings["lambda_min"] == 0.0 and loaded.settings["lambda_init"] == 0.0
    assert loaded.settings["delivered_constraint"] is False  # trained without that hinge
    assert loaded.settings["hinge_ratio"] == 1.0 and loaded.hinge_margin == loaded.margin
    assert loaded.settings["probe_context"] == "none" and loaded.probe.context_dim == 0
    resume_hint = "set diffmask.probe.probe_context: none to resume"
    with pytest.raises(ValueError, match=f"other DIFFMASK settings.*lambda_min.*{resume_hint}"):
        train_diffmask(_diffmask(setup, probe_type="simple"), _loader(setup, 16), n_epochs=2,
                       output_dir=tmp_path, quiet=True)  # fmt: skip


def test_the_delivered_mask_hinge_has_a_gradient_and_enters_the_lagrangian(setup):
    """With ``delivered_constraint`` (default), a training step computes the delivered
    (deterministic) mask's divergence with gradient to the probe and the baseline; the
    Lagrangian adds ``lambda * mean(max(D' - m, 0))`` to the sampled masks' hinge (checked
    against the closed form); without it the step has no such divergence."""
    # gates not clamped at 1; a small margin puts examples beyond it, where the hinge has slope
    dm = _diffmask(setup, lambda_init=3.0, probe_init_bias=0.0, constraint_margin=1e-6)
    assert dm.settings["delivered_constraint"] is True
    batch = next(iter(_loader(setup, 8)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ctx = {"history_emb": batch["history_emb"], "history_mask": batch["history_mask"]}
    dm.train()
    step = dm.step(ids, mask, ctx, torch.Generator().manual_seed(0))
    dd = step.delivered_divergence
    assert dd is not None and dd.shape == (len(ids),) and dd.requires_grad
    assert torch.equal(step.delivered_within_margin, dd.detach() <= dm.margin)
    assert (dd.detach() > dm.margin).any()
    hinge_d = (dd - dm.margin).clamp(min=0).sum()
    grads = torch.autograd.grad(hinge_d, [*dm.probe.parameters(), dm.baseline], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:-1])  # the probe
    assert grads[-1] is not None and grads[-1].abs().sum() > 0  # the baseline
    hinge = (step.divergence - dm.margin).clamp(min=0) + (dd - dm.margin).clamp(min=0)
    expected = dm.sparsity_term(step) + 3.0 * hinge.mean() + dm.logit_penalty(step)
    torch.testing.assert_close(dm.lagrangian(step), expected)
    # a delivered divergence above the margin raises the Lagrangian by lambda * excess / batch
    bumped = dataclasses.replace(step, delivered_divergence=dd + 1.0)
    raised = dm.lagrangian(bumped) - dm.lagrangian(step)
    expected_raise = 3.0 * ((dd + 1.0 - dm.margin).clamp(min=0) - (dd - dm.margin).clamp(min=0))
    torch.testing.assert_close(raised, expected_raise.mean())
    off = _diffmask(setup, delivered_constraint=False)
    off.train()
    step = off.step(ids, mask, ctx, torch.Generator().manual_seed(0))
    assert step.delivered_divergence is None and step.delivered_within_margin is not None


def _hinge_step(dm, batch, monkeypatch, full: bool):
    """A training step of ``dm`` on ``batch`` (fixed gate noise), its Lagrangian's gradient
    for the probe and the baseline, and the batch sizes of the masked passes with gradient;
    ``full``: every masked pass over the whole batch with gradient (the reference)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ctx = {"history_emb": batch["history_emb"], "history_mask": batch["history_mask"]}
    sizes: list[int] = []
    forward = type(dm)._masked_forward

    def spy(self, words, attention_mask, context, gates):
        if gates.requires_grad:
            sizes.append(len(words))
        return forward(self, words, attention_mask, context, gates)

    monkeypatch.setattr(type(dm), "_masked_forward", spy)
    if full:
        monkeypatch.setattr(dm, "_hinge_only_gradient", lambda: False)
    torch.manual_seed(0)
    step = dm.step(ids, mask, ctx, torch.Generator().manual_seed(0))
    params = [*dm.probe.parameters(), dm.baseline]
    grads = torch.autograd.grad(dm.lagrangian(step), params)
    monkeypatch.undo()
    return step, grads, sizes


@pytest.mark.parametrize("delivered_gradient", ["exact", "straight_through"])
def test_masked_passes_with_gradient_only_for_examples_at_the_margin(
    setup, monkeypatch, delivered_gradient
):
    """The per-example hinge max(D - m, 0) is flat within the margin: a training step runs one
    masked pass with gradient, for the sampled and the delivered masks at or beyond it only,
    and its gradient for every probe parameter and the baseline equals that of full-batch
    passes (one per mask)."""
    dm = _diffmask(setup, probe_init_bias=0.0, delivered_gradient=delivered_gradient)
    dm.train()
    batch = next(iter(_loader(setup, 16, batch_size=16)))
    first = _hinge_step(dm, batch, monkeypatch, full=True)[0]
    dm.margin = float(first.divergence.detach().median())  # the margin at the median: a mixed batch
    step, grads, sizes = _hinge_step(dm, batch, monkeypatch, full=False)
    ref_step, ref_grads, ref_sizes = _hinge_step(dm, batch, monkeypatch, full=True)
    sampled = int((step.divergence.detach() >= dm.margin).sum())
    delivered = int((step.delivered_divergence.detach() >= dm.margin).sum())
    assert 0 < sampled < 16 and 0 < delivered < 16, (sampled, delivered)  # a mixed batch
    assert sizes == [sampled + delivered] and ref_sizes == [16, 16]
    torch.testing.assert_close(step.divergence, ref_step.divergence, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        step.delivered_divergence, ref_step.delivered_divergence, rtol=1e-5, atol=1e-7
    )
    assert all(g.abs().sum() > 0 for g in ref_grads[-1:])  # the baseline moves
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_the_hinge_starts_at_hinge_ratio_times_the_margin(setup, monkeypatch):
    """``hinge_ratio`` r < 1: the Lagrangian's hinge is ``max(D - r m, 0)`` (closed form; its
    gradient from passes over the rows at or beyond r m only equals the full passes'), while
    "within the margin" (the dual's signal) is still judged at m: examples between r m and m
    are within the margin and pushed back all the same."""
    with pytest.raises(ValueError, match="hinge_ratio"):
        _diffmask(setup, hinge_ratio=0.0)
    with pytest.raises(ValueError, match="hinge_ratio"):
        _diffmask(setup, hinge_ratio=1.5)
    dm = _diffmask(setup, probe_init_bias=0.0, lambda_init=3.0, hinge_ratio=0.5)
    dm.train()
    batch = next(iter(_loader(setup, 16, batch_size=16)))
    first = _hinge_step(dm, batch, monkeypatch, full=True)[0]
    dm.margin = 2 * float(first.divergence.detach().median())  # the hinge at the median
    assert dm.hinge_margin == pytest.approx(dm.margin / 2)
    step, grads, sizes = _hinge_step(dm, batch, monkeypatch, full=False)
    _, ref_grads, _ = _hinge_step(dm, batch, monkeypatch, full=True)
    div, dd = step.divergence.detach(), step.delivered_divergence.detach()
    h, m = dm.hinge_margin, dm.margin
    assert sizes == [int((div >= h).sum()) + int((dd >= h).sum())]
    assert ((div >= h) & (div <= m)).any()  # within the margin, yet pushed back
    assert torch.equal(step.within_margin, div <= m)
    assert torch.equal(step.delivered_within_margin, dd <= m)
    hinge = (div - h).clamp(min=0) + (dd - h).clamp(min=0)
    expected = dm.sparsity_term(step) + 3.0 * hinge.mean() + dm.logit_penalty(step)
    torch.testing.assert_close(dm.lagrangian(step).detach(), expected.detach())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_a_batch_within_the_margin_keeps_zero_gradients(setup, monkeypatch):
    """No example at the margin: no masked pass with gradient, yet the probe and the baseline
    keep a (zero through the constraint) gradient, as the full passes give."""
    dm = _diffmask(setup, constraint_margin=50.0)
    dm.train()
    batch = next(iter(_loader(setup, 8)))
    _, grads, sizes = _hinge_step(dm, batch, monkeypatch, full=False)
    _, ref_grads, _ = _hinge_step(dm, batch, monkeypatch, full=True)
    assert sizes == []
    assert float(grads[-1].abs().sum()) == 0.0  # the baseline: only the constraint reaches it
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


# ------------------------------------------------ a probe that reads the user (probe_context)
class UserKeyModel(KeyTokenModel):
    """Logit = 6 * (number of the user's key token) - 3: user 0 cares only about token 2, user 1
    only about token 3. Context ``user [batch, 2]`` (one-hot) is the context vector."""

    name = "user_key"
    KEYS = (2, 3)

    @property
    def context_vector_size(self) -> int:
        return 2

    def context_vector(self, context):
        return context["user"]

    def forward(
        self, word_embeddings, attention_mask, context, output_hidden_states=False, edit=None
    ):
        x = word_embeddings * attention_mask[..., None]
        counts = x[..., list(self.KEYS)].sum(1)  # [batch, 2]
        logit = 6.0 * (counts * context["user"]).sum(-1) - 3.0
        hidden = (word_embeddings, word_embeddings) if output_hidden_states else None
        return ModelOutput(logit, hidden)


def _user_key_data(n: int):
    """Every title holds both keys (2 and 3) among fillers 4..7; each example has one user."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 8, (n, 6), generator=g)
    pos = torch.randperm(6, generator=g)[:2]
    ids[:, pos[0]], ids[:, pos[1]] = 2, 3
    user = torch.nn.functional.one_hot(torch.randint(0, 2, (n,), generator=g), 2).float()
    return ids, user


def _train_user_key(probe_context: str, tmp_path, n: int = 128, n_epochs: int = 80):
    ids, user = _user_key_data(n)
    mask = torch.ones_like(ids)
    batches = [
        {"input_ids": ids[i : i + 16], "attention_mask": mask[i : i + 16], "user": user[i : i + 16]}
        for i in range(0, len(ids), 16)
    ]
    torch.manual_seed(0)
    dm = DIFFMASK(
        UserKeyModel(),
        probe_type="simple",
        baseline_init="zeros",
        learn_baseline=False,
        constraint_margin=0.05,
        probe_context=probe_context,
    )
    # A fixed budget: the user-specific solution comes after a long stretch at "keep both
    # keys", where L0 and lambda look level (the convergence rule would stop there). With the
    # default hinge at 0.8 m it came after more than 50 epochs (measured: 60 and 80 pass).
    train_diffmask(
        dm,
        batches,
        n_epochs=n_epochs,
        lr_probe=3e-2,
        lr_lambda=0.1,
        output_dir=tmp_path,
        quiet=True,
        save_checkpoints=False,
        convergence=None,
    )
    return dm.get_attributions(ids, mask, readout="deterministic", user=user), ids, user


def test_a_probe_that_reads_the_user_keeps_only_that_users_key(tmp_path):
    scores, ids, user = _train_user_key("user", tmp_path / "user")
    wanted = torch.where(user[:, :1].bool(), ids == 2, ids == 3)
    assert (scores[wanted] == 1).all(), scores[wanted]
    assert (scores[~wanted] == 0).all(), scores[~wanted].max()
    # Without the user the probe cannot tell which key decides: it must keep both.
    blind, _, _ = _train_user_key("none", tmp_path / "none")
    assert (blind[(ids == 2) | (ids == 3)] == 1).all()


def test_probe_context_user_is_refused_without_a_context_vector_and_kept_in_checkpoints(
    setup, tmp_path
):
    with pytest.raises(ValueError, match="no per-example context vector|has none"):
        DIFFMASK(KeyTokenModel(), probe_context="user")
    with pytest.raises(ValueError, match="probe_context must be one of"):
        DIFFMASK(KeyTokenModel(), probe_context="history")
    # The default "auto": the user vector where the model has one, the title only otherwise;
    # the settings (and so checkpoints) record what it resolved to.
    assert DIFFMASK(KeyTokenModel()).settings["probe_context"] == "none"
    assert DIFFMASK(UserKeyModel()).settings["probe_context"] == "user"
    assert _diffmask(setup).settings["probe_context"] == "user"
    assert _diffmask(setup, probe_context="none").settings["probe_context"] == "none"
    model = setup[2]
    dm = _diffmask(setup, probe_context="user")
    history = train_diffmask(dm, _loader(setup, 16), n_epochs=1, output_dir=tmp_path, quiet=True)
    assert history.steps
    loaded = load_diffmask_checkpoint(tmp_path / "checkpoints" / "diffmask_epoch_1.pt", model)
    assert loaded.settings["probe_context"] == "user"
    batch = next(iter(_loader(setup, 8)))
    torch.testing.assert_close(_attr(loaded, batch), _attr(dm.eval(), batch))
    # Same titles, other users: the attributions change (the probe reads the user vector).
    torch.manual_seed(1)
    for probe in dm.probe.probes:  # a probe moved off its constant start
        nn.init.normal_(probe.mlp[-1].weight)
    shuffled = batch["history_emb"].roll(1, dims=0)
    other = dm.get_attributions(
        batch["input_ids"], batch["attention_mask"], shuffled, batch["history_mask"].roll(1, 0)
    )
    assert not torch.allclose(other, _attr(dm, batch))


# ------------------------------------------- a gate one voting probe has closed (the veto)
def _vetoed_key_step(delivered_gradient: str):
    """KeyTokenModel under the layer vote (2 probes), probe 0 open (+3) and probe 1 closed at
    -11 on every token: the delivered mask drops the KEY token, so every example lies far
    outside the margin. Returns the gradient of the Lagrangian in each probe's bias."""
    torch.manual_seed(0)
    dm = DIFFMASK(
        KeyTokenModel(),
        probe_type="layerwise",
        baseline_init="zeros",
        learn_baseline=False,
        logit_decay=0.0,  # isolates the hinge and sparsity terms
        delivered_gradient=delivered_gradient,
    )
    with torch.no_grad():
        dm.probe.probes[1].bias.fill_(-11.0)
    ids = torch.tensor([[4, KeyTokenModel.KEY, 5, 6], [KeyTokenModel.KEY, 7, 4, 5]])
    mask = torch.ones_like(ids)
    dm.train()
    step = dm.step(ids, mask, {}, torch.Generator().manual_seed(0))
    assert (step.delivered_divergence > dm.margin).all()
    dm.lagrangian(step).backward()
    return [float(p.bias.grad) for p in dm.probe.probes]


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_straight_through_adds_only_an_opening_push_to_closed_probes(direction):
    """The straight-through delivered gradient is the exact one plus, for each probe whose own
    test-time gate is clamped at 0, the token's gate gradient times (zeta - gamma) / 4, its
    opening part only: a loss that wants gates open (direction -1) pushes a vetoing probe and
    both probes of a closed token up, one that wants them closed (+1) pushes nothing closed
    further; an open gate gets nothing either way, a half-open one its exact gradient. The
    delivered values are the exact product's."""
    dm = DIFFMASK(KeyTokenModel(), probe_type="layerwise", delivered_gradient="straight_through")
    # [probes, batch, tokens]: token 0 open in both probes, token 1 vetoed by probe 1, token 2
    # closed by both, token 3 half open in probe 0 (log_alpha 0: gate 0.5) and open in probe 1
    values = torch.tensor([[[5.0, 5.0, -11.0, 0.0]], [[5.0, -11.0, -11.0, 5.0]]])
    log_alpha = values.clone().requires_grad_(True)
    scorable = torch.ones(1, 4, dtype=torch.bool)
    gates = dm._deterministic_gates(log_alpha, scorable, grad=True)
    exact = dm._deterministic_gates(values, scorable)
    assert torch.equal(gates.detach(), exact)
    assert gates[0, 0] == 1 and gates[0, 1] == 0 and gates[0, 2] == 0
    torch.testing.assert_close(gates[0, 3], torch.tensor(0.5))
    (direction * gates.sum()).backward()
    slope = (dm.gates.zeta - dm.gates.gamma) / 4  # also the exact slope at log_alpha = 0
    push = slope * min(direction, 0.0)
    expected = torch.tensor([[[0.0, 0.0, push, direction * slope]], [[0.0, push, push, 0.0]]])
    torch.testing.assert_close(log_alpha.grad, expected)


def test_straight_through_reopens_a_gate_one_probe_has_vetoed():
    exact = _vetoed_key_step("exact")
    # Through the clamped product nothing pushes the vetoed gate open: the closing probe's
    # only gradient is sparsity's (>= 0: close further), and the open probe gets none.
    assert exact[1] >= 0 and abs(exact[0]) < 1e-6
    through = _vetoed_key_step("straight_through")
    # Straight-through: the hinge pushes the vetoing probe's logit up (descent on -grad); the
    # open probe (+3, its own gate already at 1) gets no push, as through the exact product.
    assert through[1] < -0.05 and abs(through[0]) < 1e-6
    with pytest.raises(ValueError, match="delivered_gradient must be one of"):
        DIFFMASK(KeyTokenModel(), delivered_gradient="soft")


@pytest.mark.parametrize(("bias", "expected"), [(0.0, 0.0), (40.0, 1.0), (-40.0, 1.0)])
def test_saturated_share_counts_gates_no_sample_moves(bias, expected):
    """The health signal training reports: gates whose logit is so far out that their sampled
    value is clamped (0 or 1) for all practical purposes count as saturated."""
    dm = DIFFMASK(KeyTokenModel(), probe_type="layerwise")
    with torch.no_grad():
        for probe in dm.probe.probes:  # its last layer starts at zero: log_alpha = bias
            probe.bias.fill_(bias)
    ids = torch.tensor([[4, KeyTokenModel.KEY, 5, 6]])
    dm.train()
    step = dm.step(ids, torch.ones_like(ids), {}, torch.Generator().manual_seed(0))
    assert dm.saturated_share(step) == expected
