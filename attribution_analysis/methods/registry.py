"""Attribution methods by name: ``build_method("ig", model, pad_token_id=0, ...)``."""

from __future__ import annotations

from attribution_analysis.methods.attention_method import AttentionMethod
from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.diffmask_effect_method import DiffMaskEffectMethod
from attribution_analysis.methods.diffmask.diffmask_loo_method import (
    DiffMaskLeaveOneOutMethod,
    check_mask_layer,
)
from attribution_analysis.methods.diffmask.diffmask_method import DiffMaskMethod
from attribution_analysis.methods.gradient_methods import InputXGradientMethod, SaliencyMethod
from attribution_analysis.methods.integrated_gradients import IntegratedGradientsMethod
from attribution_analysis.methods.occlusion import LeaveOneOutMethod
from attribution_analysis.methods.random_method import RandomMethod

METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        DiffMaskMethod,
        DiffMaskLeaveOneOutMethod,
        DiffMaskEffectMethod,
        IntegratedGradientsMethod,
        SaliencyMethod,
        InputXGradientMethod,
        AttentionMethod,
        LeaveOneOutMethod,
        RandomMethod,
    )
}
"""Every method under its class's ``name`` (one name per method)."""

TRAINED_DIFFMASK = ("diffmask", "diffmask_loo", "diffmask_effect")
"""Methods built on a trained DIFFMASK (``build_method(name, model, diffmask=...)``)."""


def _check_name(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; valid names: {', '.join(METHODS)}")
    return name


def build_method(name: str, model, **kwargs) -> AttributionMethod:
    """``METHODS[name](model, **kwargs)``; ``ValueError`` listing the valid names otherwise.

    E.g. ``build_method("diffmask", model, diffmask=trained)`` or
    ``build_method("ig", model, special_token_ids=tok.all_special_ids,
    pad_token_id=tok.pad_token_id, n_steps=50)``.
    """
    return METHODS[_check_name(name)](model, **kwargs)


def parse_method_list(text: str, mask_layer: int = 0) -> list[str]:
    """``"diffmask, ig,random"`` -> ``["diffmask", "ig", "random"]`` (validated, duplicates
    dropped, order kept). ``mask_layer``: the DIFFMASK's, when known, so that a method it
    cannot serve (``diffmask_loo`` or ``diffmask_effect`` on a hidden-layer mask) fails
    before any training."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"no method names in {text!r}; valid names: {', '.join(METHODS)}")
    names = list(dict.fromkeys(_check_name(n) for n in names))
    for name in ("diffmask_loo", "diffmask_effect"):
        if name in names:
            check_mask_layer(mask_layer, name)
    return names


__all__ = ["METHODS", "TRAINED_DIFFMASK", "build_method", "parse_method_list"]
