"""The frozen bottom of the news encoder (embeddings + frozen PLM layers), computed once for every
news item so that training runs only the trainable top layers.

Its size is ``[num_news, tokens, hidden]``: for MIND-large with BERT-base (161k news, 30 tokens,
768) that is 15 GB in float32. ``mode`` (the ``train.lower_cache`` setting) chooses how it is
kept:

* ``auto`` (default): float32 in memory up to :data:`AUTO_FLOAT32_BYTES`, float16 above it;
* ``float32``, ``float16``, ``bfloat16``: in memory (on the model's device) in that precision;
* ``disk``: float16, memory-mapped from a file in the run folder (on the CPU; rows are gathered
  per batch), so resident memory stays bounded by the operating system's page cache;
* ``off``: no cache; the frozen bottom is recomputed every step (slowest, least memory).

Half precision rounds the cached states (relative error about 5e-4 in float16); the trainable
top layers see the rounded states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from attribution_analysis.config import LOWER_CACHE_MODES
from attribution_analysis.data.tokenization import TokenTable
from attribution_analysis.models.nrms import NRMS
from attribution_analysis.utils.distributed import gather_rows, world
from attribution_analysis.utils.modes import eval_mode

AUTO_FLOAT32_BYTES = 1 << 30
"""``auto`` keeps the cache in float32 up to this many bytes (1 GiB), float16 above."""
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cache_bytes(model: NRMS, table: TokenTable, dtype: torch.dtype = torch.float32) -> int:
    """Size of the cache of ``table`` for ``model`` in ``dtype``."""
    tokens = int(table.attention_mask.sum(-1).max())
    item = torch.empty((), dtype=dtype).element_size()
    return len(table) * tokens * model.news_encoder.hidden_size * item


def resolve_mode(mode: str, model: NRMS, table: TokenTable) -> str:
    """``mode`` with ``auto`` replaced by the precision it stands for here."""
    if mode not in LOWER_CACHE_MODES:
        raise ValueError(f"lower_cache must be one of {LOWER_CACHE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "float32" if cache_bytes(model, table) <= AUTO_FLOAT32_BYTES else "float16"


@torch.no_grad()
def build_lower_cache(
    model: NRMS,
    table: TokenTable,
    batch_size: int = 256,
    mode: str = "float32",
    path: str | Path | None = None,
    accelerator=None,
    quiet: bool = True,
) -> torch.Tensor | None:
    """Frozen-bottom states of every news item ``[num_rows, tokens, hidden]`` (``None`` for
    mode ``off``); with several processes each computes a contiguous share and all get the
    whole cache. ``disk`` needs ``path`` (a ``.npy`` file, written by the main process)."""
    mode = resolve_mode(mode, model, table)
    if mode == "off":
        return None
    encoder = model.news_encoder
    device = next(model.parameters()).device
    length = int(table.attention_mask.sum(-1).max())
    dtype = torch.float16 if mode == "disk" else _DTYPES[mode]
    hidden = encoder.hidden_size

    def batches(start: int, end: int):
        """``(first row, states [rows, tokens, hidden])`` per batch of rows ``[start, end)``."""
        bar = tqdm(total=end - start, desc="lower-layer cache", disable=quiet, unit="news")
        with eval_mode(encoder):
            for s in range(start, end, batch_size):
                e = min(s + batch_size, end)
                ids = table.input_ids[s:e, :length].to(device)
                mask = table.attention_mask[s:e, :length].to(device)
                yield s, encoder.lower_states(ids, mask).to(dtype)
                bar.update(e - s)
        bar.close()

    def compute(start: int, end: int) -> torch.Tensor:
        out = torch.empty((end - start, length, hidden), dtype=dtype, device=device)
        for s, states in batches(start, end):
            out[s - start : s - start + len(states)] = states
        return out

    if mode != "disk":
        return gather_rows(accelerator, len(table), compute)
    if path is None:
        raise ValueError("lower_cache 'disk' needs a file path for the cache")
    path = Path(path)
    if world(accelerator)[0] == 0:
        _write_npy(path, (len(table), length, hidden), batches(0, len(table)))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    # copy-on-write mapping: writable for torch, the file is never changed
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def _write_npy(path: Path, shape: tuple, batches) -> None:
    """Write float16 ``batches`` of rows into a ``.npy`` file at ``path`` (atomically), one
    batch at a time, so memory stays flat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    for s, states in batches:
        out[s : s + len(states)] = states.cpu().numpy()
    out.flush()
    del out
    tmp.replace(path)
