"""The result object every attribution method returns, and WordPiece/BPE merging into words."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from attribution_analysis.utils.io import atomic_write_text

AGGREGATIONS = ("sum", "mean", "max", "maxabs")


def _starts_word(token: str, index: int) -> bool:
    if index == 0:
        return True
    if token.startswith("##"):
        return False
    return True


def _clean(token: str) -> str:
    token = token[2:] if token.startswith("##") else token
    return token.lstrip("Ġ▁")


def _aggregate(values: list[float], how: str) -> float:
    if how == "sum":
        return float(sum(values))
    if how == "mean":
        return float(sum(values) / len(values))
    if how == "max":
        return float(max(values))
    if how == "maxabs":
        return float(max(values, key=abs))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


def merge_subwords(
    tokens: list[str], scores: list[float], keep: list[bool], how: str = "sum"
) -> tuple[list[str], list[float], list[list[int]]]:
    """Merge WordPiece pieces (``##x``) into words.

    Args:
        tokens: the tokens of one title (padding removed).
        scores: one score per token.
        keep: which tokens are words at all (False for special tokens such as ``[CLS]``).
        how: aggregation of piece scores: ``sum``, ``mean``, ``max`` or ``maxabs``.

    Returns:
        ``(words, word_scores, token_index)`` where ``token_index[j]`` lists the token positions
        that form word ``j``.
    """
    words: list[str] = []
    groups: list[list[int]] = []
    for i, (tok, ok) in enumerate(zip(tokens, keep)):
        if not ok:
            continue
        if groups and not _starts_word(tok, i) and groups[-1][-1] == i - 1:
            groups[-1].append(i)
            words[-1] += _clean(tok)
        else:
            groups.append([i])
            words.append(_clean(tok))
    word_scores = [_aggregate([scores[i] for i in g], how) for g in groups]
    return words, word_scores, groups


def library_versions() -> dict[str, str]:
    """Versions recorded in every result's metadata."""
    import captum
    import torch
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
    }
    return versions


@dataclass
class AttributionResult:
    """One explained example.

    ``tokens``/``token_scores`` cover the title's real tokens (padding removed; special tokens
    kept with score 0 unless a method scores them); ``words``/``word_scores`` merge subword pieces
    (``word_token_index`` maps words to token positions). ``original_output``/``masked_output``
    are the explained output (click probability for the recommender, predicted-class
    probability for classifiers) before and after masking; ``divergence`` is the method's
    divergence between the two (DIFFMASK only). ``annotations`` holds display data that the
    application adds (e.g. the ``title``, the ``gold_words`` and the user's
    ``history_titles``).
    """

    method: str
    tokens: list[str]
    token_scores: list[float]
    words: list[str]
    word_scores: list[float]
    word_token_index: list[list[int]] = field(default_factory=list)
    original_output: float | None = None
    masked_output: float | None = None
    divergence: float | None = None
    ids: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the fields as plain data (``dataclasses.asdict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionResult:
        return cls(**data)

    def to_json(self) -> str:
        """One JSON line; the fields are serialised directly (no deep copy: extraction writes
        thousands of results a second)."""
        fields = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> AttributionResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write this result as one JSON file (atomically)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> AttributionResult:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def top_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring words (stable for ties)."""
        order = sorted(range(len(self.words)), key=lambda j: -self.word_scores[j])
        return [(self.words[j], self.word_scores[j]) for j in order[:k]]


def read_results_jsonl(path: str | Path) -> list[AttributionResult]:
    """Read a JSONL file of results (one per line)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [AttributionResult.from_json(line) for line in handle if line.strip()]
