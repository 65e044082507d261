"""Model-randomisation sanity check (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency
Maps", arXiv:1810.03292).

Re-initialise the top of the recommender's news encoder (its additive attention and
self-attention head, then the top ``n_layers`` PLM layers) and compare each example's
attributions before and after by Spearman rank correlation over its scorable tokens. A method
whose attributions barely change (correlation near 1) does not depend on the model and fails.
The context (the users' history vectors) is the one given in the batches: the original model's,
held fixed, so only the explained candidate's encoding changes.

A method with trained parts (DIFFMASK's probe and baseline) can be checked two ways: with those
parts kept fixed and applied to the randomised model (``method_factory`` alone), or retrained
from scratch on the randomised model (``randomised_factory``, e.g. with a DIFFMASK made by
:func:`fresh_diffmask_like` and trained like the original). Only the second tests whether the
amortised explainer, as a whole, depends on the model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from attribution_analysis.data.batches import split_batch
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.models.nrms import NRMS

MethodFactory = Callable[[nn.Module], AttributionMethod]

SEED_OFFSET = 1_000_003
"""Added to ``seed`` before seeding the re-initialisation, so that seed k does not redraw the
very weights of a model that was built right after ``torch.manual_seed(k)``."""

"""Keys of ``DIFFMASK.settings`` that record facts rather than constructor arguments."""


def _reinit(module: nn.Module, std: float) -> None:
    """BERT-style init for PLM modules: Linear/Embedding ~ N(0, std), zero bias, LayerNorm 1/0."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            sub.reset_parameters()


def _reset(module: nn.Module) -> None:
    """PyTorch's default init (Linear: Kaiming uniform; MultiheadAttention: Xavier, zero biases)."""
    if isinstance(module, nn.MultiheadAttention):
        module.out_proj.reset_parameters()
        module._reset_parameters()  # in-projection; zeroes the biases (out_proj's too)
        return
    if isinstance(module, nn.Linear):
        module.reset_parameters()
        return
    for child in module.children():
        _reset(child)


def randomize_top_layers(
    nrms_model: NRMS, n_layers: int, seed: int = 0, include_head: bool = True
) -> NRMS:
    """A deep copy of ``nrms_model`` whose news encoder has re-initialised weights (seeded).

    Re-initialised: the projection, self-attention and additive-attention pooling on top of the
    PLM (``include_head``), and the top ``n_layers`` PLM layers (``N(0, initializer_range)``
    Linear weights, zero biases, identity LayerNorms). The user encoder and the word embeddings
    are untouched. The original model is not modified. The global RNG is seeded with
    ``seed + SEED_OFFSET`` inside a forked RNG state (the caller's RNG state is unchanged).
    """
    encoder = nrms_model.news_encoder
    if not 0 <= n_layers <= encoder.num_layers:
        raise ValueError(f"n_layers must be in [0, {encoder.num_layers}], got {n_layers}")
    model = copy.deepcopy(nrms_model)
    news = model.news_encoder
    std = float(getattr(news.plm.config, "initializer_range", 0.02))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed + SEED_OFFSET)
        if include_head:
            for module in (news.proj, news.mhsa, news.pool):
                _reset(module)
        for layer in list(news.layers)[news.num_layers - n_layers :]:
            _reinit(layer, std)
    return model


def fresh_diffmask_like(diffmask: DIFFMASK, model: nn.Module, seed: int | None = None) -> DIFFMASK:
    """An untrained DIFFMASK with ``diffmask``'s settings for ``model`` (a model of the same shape,
    e.g. a randomised copy): a new probe, baseline and Lagrange multiplier.

    With ``seed`` the probe is initialised after ``torch.manual_seed(seed)`` inside a forked RNG
    state (the caller's RNG state is unchanged), as :meth:`Workspace.build_diffmask` does with
    the config's seed: the same seed gives the original run's initial probe. Without it the
    global RNG is used as it stands.
    """
    kwargs = DIFFMASK.constructor_settings(diffmask.settings)
    if seed is None:
        return DIFFMASK(model, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DIFFMASK(model, **kwargs)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (scipy); nan with fewer than 2 values or a constant side."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def _attributions(method: AttributionMethod, batches: list[dict], device) -> list[np.ndarray]:
    """Scores of every example over its scorable tokens (1-D arrays)."""
    out = []
    for batch in batches:
        ids, mask, context, _ = split_batch(batch, device)
        context = method.adapter.prepare_context(context)
        scores = method.attribute(ids, mask, context).detach().double().cpu()
        scorable = method.scorable(ids, mask).cpu()
        out.extend(scores[i][scorable[i]].numpy() for i in range(len(ids)))
    return out


def sanity_check(
    method_factory: MethodFactory,
    model: NRMS,
    batches: Iterable[dict],
    n_layers: int | None = None,
    seed: int = 0,
    include_head: bool = True,
    device: torch.device | str | None = None,
    randomised_factory: MethodFactory | None = None,
) -> dict:
    """Spearman correlation between attributions of ``model`` and of its randomised copy.

    Args:
        method_factory: ``model -> AttributionMethod``, called on the original (and on the copy
            unless ``randomised_factory`` is given).
        model: the NRMS recommender.
        batches: loader batches (``input_ids``, ``attention_mask``, context tensors).
        n_layers: PLM layers re-initialised from the top (default: all).
        seed: seed of the re-initialisation.
        include_head: also re-initialise the news encoder's attention and pooling.
        randomised_factory: ``randomised copy -> AttributionMethod`` (default
            ``method_factory``), e.g. one that retrains the method's trained parts on the copy.

    Returns:
        ``spearman_mean`` (mean over examples with a defined correlation; range [-1, 1], lower
        is better: near 1 = the method ignores the model), ``spearman`` (per example, nan where
        undefined), ``n_examples``, ``n_undefined``, ``n_layers``, ``seed``, ``include_head``,
        ``method``.
    """
    device = device or next(model.parameters()).device
    n_layers = model.news_encoder.num_layers if n_layers is None else n_layers
    batches = list(batches)
    randomised = randomize_top_layers(model, n_layers, seed, include_head).to(device)
    original_method = method_factory(model)
    before = _attributions(original_method, batches, device)
    after_factory = method_factory if randomised_factory is None else randomised_factory
    after = _attributions(after_factory(randomised), batches, device)
    rhos = [spearman(a, b) for a, b in zip(before, after)]
    finite = [r for r in rhos if not math.isnan(r)]
    return {
        "spearman_mean": float(np.mean(finite)) if finite else math.nan,
        "spearman": rhos,
        "n_examples": len(rhos),
        "n_undefined": len(rhos) - len(finite),
        "n_layers": n_layers,
        "seed": seed,
        "include_head": include_head,
        "method": original_method.name,
    }


__all__ = [
    "SEED_OFFSET",
    "fresh_diffmask_like",
    "randomize_top_layers",
    "sanity_check",
    "spearman",
]
