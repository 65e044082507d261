"""The results of one attribution run as one object: JSONL save and load, the per-example rows
the report shows, the top-word tables and the summary metrics.

Every method's results have the same shape (:class:`AttributionResult`); ``attributions.jsonl``
holds one result per line, so a run folder can be read back with :meth:`AttributionRun.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attribution_analysis.evaluation.plausibility import plausibility_metrics
from attribution_analysis.evaluation.word_statistics import KEEP_THRESHOLD, MIN_SUPPORT, top_words
from attribution_analysis.methods.result import AttributionResult, read_results_jsonl
from attribution_analysis.utils.io import atomic_write_text

GoldLabels = Callable[[AttributionResult], "list[int] | None"]
"""``result -> 0/1 per token`` of the result's gold rationale (``None`` without one)."""


@dataclass
class AttributionRun:
    """``results`` of one method on a set of examples, plus ``info`` about the run (method,
    settings, split, ...; free-form, saved by the caller where it wants)."""

    results: list[AttributionResult]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.results)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``attributions.jsonl``: one result per line (atomically)."""
        return atomic_write_text(path, "".join(r.to_json() + "\n" for r in self.results))

    @classmethod
    def load(cls, path: str | Path, info: dict[str, Any] | None = None) -> AttributionRun:
        """Read a JSONL file written by :meth:`save`."""
        return cls(read_results_jsonl(path), dict(info or {}))

    # ------------------------------------------------------------------ views
    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per result, what the report and the word tables read: ids, ``title``,
        tokens and words with their scores, ``original_prob``/``masked_prob``, ``divergence``,
        ``gold_words``, ``history_titles`` and ``method``."""
        out = []
        for r in self.results:
            ids, notes = r.ids, r.annotations
            out.append(
                {
                    "impression_id": ids.get("impression_id"),
                    "user_id": ids.get("user_id"),
                    "news_id": ids.get("news_id"),
                    "label": ids.get("label"),
                    "title": notes.get("title"),
                    "tokens": r.tokens,
                    "token_scores": r.token_scores,
                    "words": r.words,
                    "word_scores": r.word_scores,
                    "original_prob": r.original_output,
                    "masked_prob": r.masked_output,
                    "divergence": r.divergence,
                    "gold_words": notes.get("gold_words"),
                    "history_titles": notes.get("history_titles", []),
                    "method": r.method,
                }
            )
        return out

    def top_words_per_sample(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` highest-scoring words of each example, ranked 1..k."""
        rows = []
        for r in self.results:
            for rank, (word, score) in enumerate(r.top_words(k), start=1):
                rows.append(
                    {
                        "impression_id": r.ids.get("impression_id"),
                        "news_id": r.ids.get("news_id"),
                        "rank": rank,
                        "word": word,
                        "score": score,
                    }
                )
        return rows

    def top_words(self, k: int, min_support: int = MIN_SUPPORT) -> list[dict[str, Any]]:
        """The ``k`` words most reliably kept (score >= ``KEEP_THRESHOLD``) among words seen at
        least ``min_support`` times, ranked by the Wilson lower bound of their kept share (see
        :func:`attribution_analysis.evaluation.word_statistics.top_words`)."""
        return top_words(self.rows(), k, min_support=min_support, threshold=KEEP_THRESHOLD)

    # ------------------------------------------------------------------ metrics
    def evaluate(self, margin: float, gold_labels: GoldLabels | None = None) -> dict[str, Any]:
        """Share within the divergence ``margin``, same-decision share, kept share and (when
        ``gold_labels`` gives labels) plausibility against the gold rationales. Examples with
        no scorable token (nothing to explain) are left out and counted as ``n_unscorable``."""
        results = [r for r in self.results if r.word_token_index]
        n = len(results)
        if n == 0:
            return {"n_samples": 0, "n_unscorable": len(self.results)}
        within = [r.divergence <= margin for r in results]
        agree = [(r.original_output > 0.5) == (r.masked_output > 0.5) for r in results]
        kept = [s for r in results for s in _scorable_scores(r)]
        summary = {
            "n_samples": n,
            "n_unscorable": len(self.results) - n,
            "within_margin_share": sum(within) / n,
            "agreement_share": sum(agree) / n,
            "satisfied_share": sum(w and a for w, a in zip(within, agree)) / n,
            "mean_divergence": sum(r.divergence for r in results) / n,
            "kept_share": sum(kept) / max(len(kept), 1),
            "kept_share_thresholded": sum(s >= KEEP_THRESHOLD for s in kept) / max(len(kept), 1),
        }
        gold, scores = _gold_and_scores(results, gold_labels)
        if gold:
            plaus = plausibility_metrics(gold, scores)
            summary.update({k: v for k, v in plaus.items() if k != "per_example"})
        return summary


def _scorable_scores(result: AttributionResult) -> list[float]:
    return [result.token_scores[i] for idx in result.word_token_index for i in idx]


def _gold_and_scores(
    results: Sequence[AttributionResult], gold_labels: GoldLabels | None
) -> tuple[list[list[int]], list[list[float]]]:
    gold, scores = [], []
    for res in results:
        labels = gold_labels(res) if gold_labels is not None else None
        if labels is None:
            continue
        positions = [i for idx in res.word_token_index for i in idx]
        gold.append([labels[i] for i in positions])
        scores.append([res.token_scores[i] for i in positions])
    return gold, scores


__all__ = ["AttributionRun", "GoldLabels"]
