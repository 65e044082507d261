"""The interface every attribution method implements, and the shared ``explain`` that turns
token scores into :class:`~attribution_analysis.methods.result.AttributionResult` objects."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from attribution_analysis.methods.explained_model import Context, ExplainedModel, make_adapter
from attribution_analysis.methods.result import AttributionResult, library_versions, merge_subwords


def scorable_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Tokens that are explained: real (non-padding) and not special. ``[batch, tokens]`` bool."""
    mask = attention_mask.bool()
    special = torch.as_tensor(
        list(special_ids) if not torch.is_tensor(special_ids) else special_ids
    )
    if special.numel():
        mask = mask & ~torch.isin(input_ids, special.to(input_ids.device))
    return mask


def build_results(
    method: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scores: torch.Tensor,
    scorable: torch.Tensor,
    tokenizer,
    ids: list[dict] | None,
    word_aggregation: str,
    meta: dict,
    per_example: dict[str, Sequence] | None = None,
    original: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
    divergence: torch.Tensor | None = None,
) -> list[AttributionResult]:
    """One :class:`AttributionResult` per row of ``scores [batch, tokens]``: padding removed,
    pieces merged into words over ``scorable`` tokens; ``per_example`` values (lists of length
    ``batch``) go into each result's metadata; ``original``/``masked``/``divergence`` are
    ``[batch]`` tensors when known."""
    # one device-to-host copy per tensor and batch, not one per example
    lengths = attention_mask.sum(-1).tolist()
    all_ids, all_scores = input_ids.tolist(), scores.float().tolist()
    all_scorable = scorable.tolist()
    outputs = [None if t is None else t.float().tolist() for t in (original, masked, divergence)]
    results = []
    for i, n in enumerate(lengths):
        n = int(n)
        token_ids = all_ids[i][:n]
        tokens = (
            tokenizer.convert_ids_to_tokens(token_ids) if tokenizer else [str(t) for t in token_ids]
        )
        token_scores = all_scores[i][:n]
        words, word_scores, index = merge_subwords(
            tokens, token_scores, all_scorable[i][:n], word_aggregation
        )
        orig, mask_out, div = (None if o is None else o[i] for o in outputs)
        results.append(
            AttributionResult(
                method=method,
                tokens=tokens,
                token_scores=token_scores,
                words=words,
                word_scores=word_scores,
                word_token_index=index,
                original_output=orig,
                masked_output=mask_out,
                divergence=div,
                ids=(ids[i] if ids else {}),
                metadata={**meta, **{k: v[i] for k, v in (per_example or {}).items()}},
            )
        )
    return results


class AttributionMethod(ABC):
    """One attribution method over an explained model.

    Subclasses implement :meth:`_attribute` (scores ``[batch, tokens]``, exactly 0 on padding
    and special tokens, optionally with extra per-example outputs) and set ``name`` (the one
    name the registry knows them by) and ``word_aggregation`` (how subword scores merge).
    """

    name: str = "method"
    word_aggregation: str = "sum"

    def __init__(
        self,
        model,
        special_token_ids: Sequence[int] = (),
        seed: int = 0,
        pad_token_id: int | None = None,
        mask_token_id: int | None = None,
    ) -> None:
        """Every method takes the same token-id information (``special_token_ids`` never
        scored; ``pad_token_id``/``mask_token_id`` for methods that build baselines from them)
        and a ``seed``, so that any method is built the same way by name."""
        self.adapter: ExplainedModel = make_adapter(model)
        self.special_token_ids = sorted(int(i) for i in special_token_ids)
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.mask_token_id = mask_token_id

    def scorable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return scorable_mask(input_ids, attention_mask, self.special_token_ids)

    def attribute(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        return_extras: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token scores ``[batch, tokens]``; higher = more responsible for the output. With
        ``return_extras`` (as Captum's ``return_convergence_delta``), also the method's extra
        per-example outputs ``{name: [batch]}`` (e.g. IG's completeness error; ``{}`` for most
        methods)."""
        out = self._attribute(input_ids, attention_mask, context)
        scores, extras = out if isinstance(out, tuple) else (out, {})
        return (scores, extras) if return_extras else scores

    @abstractmethod
    def _attribute(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: Context
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scores ``[batch, tokens]`` (exactly 0 on padding and special tokens), or the scores
        and a dict of extra per-example outputs ``{name: [batch]}``."""

    def settings(self) -> dict:
        """Method arguments recorded in each result's metadata."""
        return {}

    @torch.no_grad()
    def _outputs(self, input_ids, attention_mask, context) -> torch.Tensor:
        words = self.adapter.embed(input_ids)
        out = self.adapter.forward(words, attention_mask, context)
        return self.adapter.explained_output(out.output, context)

    def explain(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: Context,
        tokenizer=None,
        ids: list[dict] | None = None,
    ) -> list[AttributionResult]:
        """Results for a batch (tokens, token and word scores, the explained output)."""
        context = self.adapter.with_decision(
            input_ids, attention_mask, self.adapter.prepare_context(context)
        )
        t0 = time.perf_counter()
        scores, extras = self.attribute(input_ids, attention_mask, context, return_extras=True)
        scores = scores.detach().float()
        seconds = (time.perf_counter() - t0) / len(input_ids)
        original = self._outputs(input_ids, attention_mask, context)
        scorable = self.scorable(input_ids, attention_mask)
        meta = {
            "method": self.name,
            "settings": self.settings(),
            "seed": self.seed,
            "word_aggregation": self.word_aggregation,
            "explained": "probability of the model's decision on the original input",
            "seconds": seconds,
            "versions": library_versions(),
        }
        return build_results(
            self.name,
            input_ids,
            attention_mask,
            scores,
            scorable,
            tokenizer,
            ids,
            self.word_aggregation,
            meta,
            per_example={k: v.tolist() for k, v in extras.items()},
            original=original,
        )
