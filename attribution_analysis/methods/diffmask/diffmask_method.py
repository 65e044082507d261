"""A trained DIFFMASK behind the common :class:`~attribution_analysis.methods.base.
AttributionMethod` interface, so it is evaluated exactly like the baselines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from attribution_analysis.methods.base import AttributionMethod
from attribution_analysis.methods.diffmask.checkpoint import load_diffmask_checkpoint
from attribution_analysis.methods.diffmask.diffmask import DIFFMASK, READOUTS
from attribution_analysis.methods.explained_model import Context, ExplainedModel, make_adapter
from attribution_analysis.methods.result import AttributionResult
from attribution_analysis.utils.modes import eval_mode


class DiffMaskMethod(AttributionMethod):
    """Attributions of a trained :class:`DIFFMASK` (one forward pass plus the probe).

    Args:
        model: the explained model (may be ``None``: DIFFMASK's own); must be the model the
            DIFFMASK was built for.
        diffmask: a trained DIFFMASK; alternatively ``checkpoint``, a checkpoint path loaded with
            ``load_diffmask_checkpoint`` (which checks it was made for ``model``).
        readout: overrides ``diffmask.settings["readout"]``.
        word_aggregation: how piece scores merge into word scores (default ``max``).
        special_token_ids, pad_token_id, mask_token_id: the token ids every method takes; the
            DIFFMASK holds its own, and ids given here must agree with them.

    Words take the max of their pieces.
    """

    name = "diffmask"
    word_aggregation = "max"

    def __init__(
        self,
        model: nn.Module | ExplainedModel | None = None,
        diffmask: DIFFMASK | None = None,
        checkpoint: str | Path | None = None,
        readout: str | None = None,
        seed: int = 0,
        special_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
        word_aggregation: str | None = None,
    ) -> None:
        diffmask = self._resolve(model, diffmask, checkpoint)
        s = diffmask.settings
        _check_same_ids(
            s,
            special_token_ids=None if special_token_ids is None else sorted(special_token_ids),
            pad_token_id=pad_token_id,
            mask_token_id=mask_token_id,
        )
        super().__init__(
            diffmask.adapter, s["special_token_ids"], seed, s["pad_token_id"], s["mask_token_id"]
        )
        if readout is not None and readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.diffmask = diffmask
        self.readout = readout or diffmask.settings["readout"]
        self.word_aggregation = word_aggregation or type(self).word_aggregation

    @staticmethod
    def _resolve(model, diffmask, checkpoint) -> DIFFMASK:
        if (diffmask is None) == (checkpoint is None):
            raise ValueError("pass exactly one of diffmask= (a DIFFMASK) or checkpoint= (a path)")
        if diffmask is None:
            if model is None:
                raise ValueError("loading a DIFFMASK checkpoint needs the explained model")
            return load_diffmask_checkpoint(checkpoint, model)
        if model is not None and make_adapter(model).model is not diffmask.adapter.model:
            raise ValueError("this DIFFMASK was built for another model")
        return diffmask

    def settings(self) -> dict:
        return {
            **self.diffmask.settings,
            "readout": self.readout,
            "lambda": float(self.diffmask.lagrange_multiplier.detach()),
        }

    @torch.no_grad()
    def _attribute(self, input_ids, attention_mask, context) -> torch.Tensor:
        """Scores ``[batch, tokens]`` (0 on padding and special tokens)."""
        with eval_mode(self.diffmask, self.adapter.model):
            scores = self.diffmask.get_attributions(
                input_ids, attention_mask, readout=self.readout, **context
            )
        return scores * self.scorable(input_ids, attention_mask)

    def explain(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        tokenizer=None,
        ids: list[dict] | None = None,
    ) -> list[AttributionResult]:
        """:meth:`DIFFMASK.explain` with this method's read-out and word aggregation: the
        scores plus the original and masked outputs and the divergence of the delivered
        mask (two forward passes)."""
        return self.diffmask.explain(
            input_ids,
            attention_mask,
            context,
            tokenizer,
            ids,
            self.word_aggregation,
            readout=self.readout,
        )


def _check_same_ids(settings: dict, **given) -> None:
    """Token ids given to the method must be the ones the DIFFMASK was built with."""
    for key, value in given.items():
        own = settings.get(key)
        if value is not None and own is not None and value != own:
            raise ValueError(
                f"{key}={value} differs from the DIFFMASK's ({own}); it was built "
                "for another tokenizer"
            )


__all__ = ["DiffMaskMethod"]
