"""The original-pass cache serves what the model would compute, and training with it gives the
same run as training without it, with one forward pass per example and epoch fewer; the
delivered-mask check may run on a subset of each batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from attribution_analysis.data.known_answer import MASK, PAD, SPECIAL_IDS, KeyCountTask
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.original_cache import OriginalPassCache
from attribution_analysis.methods.diffmask.train_diffmask import train_diffmask
from attribution_analysis.models.sequence_classifier import small_bert_classifier
from tests.helpers_foundation import single_thread

TASK = KeyCountTask()


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def _model():
    torch.manual_seed(0)
    model = small_bert_classifier(
        TASK.vocab_size, TASK.max_tokens, hidden_size=32, num_heads=2, num_labels=TASK.num_labels
    )
    return model.eval()


def _diffmask(model) -> DIFFMASK:
    torch.manual_seed(0)
    return DIFFMASK(model, special_token_ids=SPECIAL_IDS, mask_token_id=MASK, pad_token_id=PAD)


def _trimmed(ids: torch.Tensor, mask: torch.Tensor):
    """A batch padded only to its longest example, as the news loaders produce."""
    longest = int(mask.sum(-1).max())
    return ids[:, :longest], mask[:, :longest]


def test_cache_serves_the_recomputed_pass_for_other_batch_compositions():
    data = TASK.generate(24, seed=3)
    dm = _diffmask(_model())
    cache = OriginalPassCache()
    first = torch.arange(0, 12)
    ids, mask = _trimmed(data.input_ids[first], data.attention_mask[first])
    assert cache.get(first, mask) is None
    cache.put(first, mask, dm.original_pass(ids, mask, {}))
    assert len(cache) == 12
    mixed = torch.tensor([5, 13, 2])  # 13 was never stored
    assert cache.get(mixed, mask[:3]) is None
    again = torch.tensor([7, 0, 11, 3])  # another order and another padded length
    ids, mask = _trimmed(data.input_ids[again], data.attention_mask[again])
    served = cache.get(again, mask)
    direct = dm.original_pass(ids, mask, {})
    torch.testing.assert_close(served.output, direct.output, atol=1e-5, rtol=1e-5)
    real = mask.bool()[..., None]
    for s, d in zip(served.hidden_states, direct.hidden_states):
        assert s.shape == d.shape
        torch.testing.assert_close(s * real, d * real, atol=1e-5, rtol=1e-5)


def test_cache_refuses_a_pass_without_hidden_states():
    data = TASK.generate(4, seed=3)
    dm = _diffmask(_model())
    out = dm.adapter.forward(dm.adapter.embed(data.input_ids), data.attention_mask, {})
    with pytest.raises(ValueError, match="hidden states"):
        OriginalPassCache().put(torch.arange(4), data.attention_mask, out)


def _train(cache: bool, calls: list[int]):
    model = _model()
    dm = _diffmask(model)
    real = dm.original_pass

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    dm.original_pass = counted
    train = TASK.generate(64, seed=4)
    val = TASK.generate(32, seed=5)
    torch.manual_seed(0)
    history = train_diffmask(
        dm,
        DataLoader(train, batch_size=16, shuffle=True),
        n_epochs=3,
        val_loader=DataLoader(val, batch_size=16),
        save_checkpoints=False,
        quiet=True,
        convergence=None,
        cache_original_pass=cache,
    )
    return history


def test_training_with_the_cache_equals_training_without_it():
    with_calls: list[int] = []
    without_calls: list[int] = []
    cached = _train(True, with_calls)
    plain = _train(False, without_calls)
    assert sum(without_calls) == 3 * (64 + 32)
    assert sum(with_calls) == 64 + 32  # the first epoch only
    for a, b in zip(cached.epochs, plain.epochs):
        for key in ("loss", "l0", "lambda", "val_l0", "val_divergence"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


def test_delivered_check_on_a_subset_of_the_batch():
    data = TASK.generate(8, seed=6)
    model = _model()
    torch.manual_seed(0)
    dm = DIFFMASK(
        model,
        special_token_ids=SPECIAL_IDS,
        mask_token_id=MASK,
        pad_token_id=PAD,
        delivered_check_examples=3,
        delivered_constraint=False,
    ).train()
    step = dm.step(data.input_ids, data.attention_mask, {})
    assert step.delivered_within_margin.shape == (3,)
    full = _diffmask(model).train()
    assert full.step(data.input_ids, data.attention_mask, {}).delivered_within_margin.shape == (8,)
    with pytest.raises(ValueError, match="delivered_check_examples"):
        DIFFMASK(model, delivered_check_examples=0, delivered_constraint=False)
    with pytest.raises(ValueError, match="only with delivered_constraint=False"):
        DIFFMASK(model, delivered_check_examples=3)  # the hinge needs the whole batch
    from attribution_analysis.config import AttributionConfig, ConfigError, from_dict

    with pytest.raises(ConfigError, match="only with delivered_constraint: false"):
        from_dict(AttributionConfig, {"diffmask": {"objective": {"delivered_check_examples": 3}}})


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_checkpoints_give_one_line_and_resume_falls_back(tmp_path, capsys):
    import pickle

    from attribution_analysis.methods.diffmask.train_diffmask import load_diffmask_checkpoint

    model = _model()
    train = DataLoader(TASK.generate(32, seed=4), batch_size=16)
    kwargs = {"output_dir": tmp_path, "quiet": True, "convergence": None}
    train_diffmask(_diffmask(model), train, n_epochs=2, **kwargs)
    ckpt = tmp_path / "checkpoints" / "diffmask_epoch_2.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])  # truncated by a crash
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print))  # code that safe loading must not run
    for path in (ckpt, text, evil):
        with pytest.raises(ValueError, match="not a readable DIFFMASK checkpoint") as exc:
            load_diffmask_checkpoint(path, model)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)
    capsys.readouterr()
    history = train_diffmask(_diffmask(model), train, n_epochs=2, **{**kwargs, "quiet": False})
    out = capsys.readouterr().out
    assert "trying the previous epoch" in out and "diffmask_epoch_1.pt" in out
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    load_diffmask_checkpoint(ckpt, model)  # epoch 2 written again, readable
