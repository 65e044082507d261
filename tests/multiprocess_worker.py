"""Run under ``torchrun --nproc_per_node N`` by ``tests/test_multiprocess.py`` (not a test module).

    python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_worker.py CORPUS OUT

Trains the recommender (a few steps; the PLM frozen and dropout off, so the run is exact), then
DIFFMASK for one epoch, then extracts attributions, all through the library's multi-process
paths. Each process records which examples it saw in ``OUT/seen_<rank>.json``; the main process
writes the results (the recommender's folder, ``diffmask_state_<rank>.pt`` from every process to
check that all hold the same DIFFMASK, and ``attributions.jsonl``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from attribution_analysis.config import RecommenderConfig, TrainConfig
from attribution_analysis.data.explanation_set import ExplanationSet, select_examples
from attribution_analysis.data.loading import load_mind_data
from attribution_analysis.methods.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.train_diffmask import (
    extract_attributions_diffmask,
    train_diffmask,
)
from attribution_analysis.models import click_scorer
from attribution_analysis.models.inference import encode_news_table
from attribution_analysis.models.serialization import load_model
from attribution_analysis.models.training import train_recommender
from attribution_analysis.utils.devices import make_accelerator
from tests.helpers_foundation import data_config, tiny_config, tiny_tokenizer

SEEN: dict[str, list] = {"recommender": [], "diffmask": []}


def _recording(forward):
    def wrapped(self, batch, table, lower_cache=None):
        SEEN["recommender"].extend(batch["candidates"][:, 0].tolist())
        return forward(self, batch, table, lower_cache)

    return wrapped


def main(corpus: Path, out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = make_accelerator("cpu")
    rank = accelerator.process_index
    tok = tiny_tokenizer()
    data_cfg = data_config(corpus, out / f"cache_{rank}")
    config = RecommenderConfig(
        data=data_cfg,
        model=tiny_config(fine_tune_layers=0, dropout=0.0),
        train=TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=6, lr=3e-3,
                          warmup_steps=2, device="cpu", output_dir=str(out / "rec")),
    )  # fmt: skip
    click_scorer.ClickScorer.forward = _recording(click_scorer.ClickScorer.forward)
    data = load_mind_data(data_cfg, tok)
    result = train_recommender(config, data=data, run_dir=out / "rec", quiet=True)
    model = load_model(result.best_dir, config).eval()

    vectors = encode_news_table(model, data.table)
    ds = ExplanationSet(select_examples(data.train, 48, seed=0), data.table, vectors)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=ds.collate,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.manual_seed(0)
    dm = DIFFMASK(model, probe_type="simple", special_token_ids=tok.all_special_ids,
                  mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    original_step = dm.step

    def recording_step(input_ids, *args, **kwargs):
        if dm.training:
            SEEN["diffmask"].extend(input_ids[:, 1].tolist())
        return original_step(input_ids, *args, **kwargs)

    dm.step = recording_step
    train_diffmask(dm, loader, n_epochs=1, convergence=None, output_dir=out / "dm", quiet=True)
    torch.save({k: v.detach().clone() for k, v in dm.state_dict().items()},
               out / f"diffmask_state_{rank}.pt")  # fmt: skip

    plain = DataLoader(ds, batch_size=8, collate_fn=ds.collate)  # unshuffled, 6 batches
    results = extract_attributions_diffmask(
        dm, plain, n_samples=44, tokenizer=tok, output_path=out / "attributions.jsonl",
        quiet=True, accelerator=accelerator,
    )  # fmt: skip
    SEEN["returned"] = len(results)
    (out / f"seen_{rank}.json").write_text(json.dumps(SEEN))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
