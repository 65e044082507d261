"""Shared helpers of the foundation tests (MIND readers, token tables, datasets, NRMS, training).

Plain functions, not fixtures: each test module wraps what it needs in its own fixtures.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from attribution_analysis.config import DataConfig, ModelConfig
from attribution_analysis.data.mind import Impression
from attribution_analysis.data.synthetic import SyntheticConfig, generate_corpus

TINY = {"encoder": "tiny-random-bert", "num_heads": 2, "head_dim": 8, "query_dim": 16}

#: A small corpus the tiny random model can learn in a few epochs: two topics, no noise clicks.
LEARNABLE_CORPUS = SyntheticConfig(
    seed=0,
    n_news=300,
    n_users=100,
    n_impressions=400,
    n_topics=2,
    max_interests=1,
    noise_click_rate=0.0,
    max_history=10,
    max_candidates=10,
)


def tiny_config(**overrides) -> ModelConfig:
    """The tiny random BERT NRMS used by every test (real MiniLM tokenizer)."""
    return ModelConfig(**{**TINY, **overrides})


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """The tokenizer of :func:`tiny_config`, loaded once per test process."""
    from attribution_analysis.models.pretrained import load_tokenizer

    return load_tokenizer(tiny_config())


def single_thread() -> Iterator[None]:
    """Run torch on one thread (the 2 shared cores thrash with more), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def news_line(news_id: str, title: str = "a title", category: str = "news") -> str:
    """One valid 8-column news.tsv row (no trailing newline)."""
    return "\t".join(
        [news_id, category, "sub", title, "an abstract", f"https://x/{news_id}", "[]", "[]"]
    )


def behaviors_line(
    impression_id: str,
    history: Sequence[str],
    candidates: str,
    user_id: str = "U1",
    time: str = "11/11/2019 9:05:58 AM",
) -> str:
    """One 5-column behaviors.tsv row; ``candidates`` is the raw 5th column."""
    return "\t".join([impression_id, user_id, time, " ".join(history), candidates])


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` as a UTF-8 file (each followed by a newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_corpus(out_dir: Path, config: SyntheticConfig = LEARNABLE_CORPUS) -> Path:
    """Generate a synthetic MIND-format corpus in ``out_dir`` (train/ and dev/)."""
    generate_corpus(out_dir, config)
    return out_dir


def data_config(corpus: Path, cache_dir: Path, **overrides) -> DataConfig:
    """A :class:`DataConfig` over ``corpus`` with absolute paths and no auto-generation."""
    values = {
        "train_dir": str(corpus / "train"),
        "dev_dir": str(corpus / "dev"),
        "rationales": None,
        "cache_dir": str(cache_dir),
        "max_title_len": 16,
        "max_history": 10,
        "generate_synthetic_if_missing": False,
    }
    return DataConfig(**{**values, **overrides})


def impression(
    impression_id: str,
    history: Sequence[str],
    candidates: Sequence[str],
    labels: Sequence[int] | None,
    user_id: str = "U1",
) -> Impression:
    """An :class:`Impression` built in memory."""
    return Impression(
        impression_id,
        user_id,
        "11/11/2019 9:05:58 AM",
        tuple(history),
        tuple(candidates),
        None if labels is None else tuple(labels),
    )


def tiny_nrms(seed: int = 0):
    """``(tokenizer, model)``: the MiniLM tokenizer and a seeded tiny random NRMS in eval mode."""
    import torch

    from attribution_analysis.models.serialization import build_nrms

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    return tok, build_nrms(tiny_config(), len(tok)).eval()


REPO = Path(__file__).resolve().parent.parent
TINY_CONFIGS = ("configs/attribution/tiny_test.yaml", "configs/recommender/tiny_test.yaml")
"""The seconds-long attribution and recommender configs, relative to the repository root."""


def copy_tiny_configs(root: Path) -> Path:
    """Copy :data:`TINY_CONFIGS` into ``root`` (same relative paths), for a run from there."""
    for rel in TINY_CONFIGS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    return root


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spread_diffmask(tok, model):
    """An untrained DIFFMASK for ``model`` whose probes give spread-out keep probabilities (some
    tokens kept, some dropped) and a baseline away from every word embedding (eval mode)."""
    from attribution_analysis.methods.diffmask import DIFFMASK

    torch.manual_seed(1)
    dm = DIFFMASK(model, special_token_ids=tok.all_special_ids, mask_token_id=tok.mask_token_id)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for probe in dm.probe.probes:
            probe.mlp[-1].weight.copy_(3.0 * torch.randn(probe.mlp[-1].weight.shape, generator=gen))
        dm.baseline.copy_(torch.randn(dm.baseline.shape, generator=gen))
    return dm.eval()


def scores_for_decision(method, dm, ids, mask, context, sign: float) -> tuple:
    """``method``'s scores with the decision forced to ``sign`` for every example: returns the
    prepared context with that decision, the scores, DIFFMASK's keep probabilities and the
    scorable mask."""
    adapter = method.adapter
    ctx = {**adapter.prepare_context(context), "decision_sign": torch.full((len(ids),), sign)}
    scores = method.attribute(ids, mask, ctx)
    return ctx, scores, dm.get_attributions(ids, mask, **ctx), method.scorable(ids, mask)
