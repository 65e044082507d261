"""Readers for MIND-format ``news.tsv`` (8 columns) and ``behaviors.tsv`` (5 columns).

Malformed rows raise :class:`DataError` naming the file and the 1-based line. With
``strict=False`` they are skipped and counted in :class:`ReadStats` instead. Unknown news ids in a
history are always dropped and counted (MIND histories reference news from earlier periods).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NEWS_COLUMNS = 8
BEHAVIORS_COLUMNS = 5


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and line.

    ``kind`` is a short reason without row details (used to count skipped rows).
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or message


@dataclass(frozen=True)
class NewsRecord:
    """One row of ``news.tsv`` (entity columns are kept as raw JSON strings)."""

    news_id: str
    category: str
    subcategory: str
    title: str
    abstract: str
    url: str = ""
    title_entities: str = "[]"
    abstract_entities: str = "[]"


@dataclass(frozen=True)
class Impression:
    """One row of ``behaviors.tsv``.

    ``labels`` is ``None`` for unlabelled impressions (MIND-large test), else one 0/1 per
    candidate. ``history`` keeps only news ids that a news.tsv knows, oldest first.
    """

    impression_id: str
    user_id: str
    time: str
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...] | None


@dataclass
class ReadStats:
    """Counts of skipped rows (non-strict mode) and dropped history ids."""

    skipped: Counter = field(default_factory=Counter)
    dropped_history_ids: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> str:
        """One human-readable line, e.g. for the end of a run."""
        parts = [f"{n} row(s) skipped: {reason}" for reason, n in sorted(self.skipped.items())]
        parts.append(f"{self.dropped_history_ids} unknown history id(s) dropped")
        return "; ".join(parts)


def _fail_or_skip(strict: bool, stats: ReadStats, where: str, reason: str) -> None:
    if strict:
        raise DataError(f"{where}: {reason}")
    stats.skip(reason.split(":")[0].split(" (")[0])


def _lines(path: Path, strict: bool, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file; a line with bad bytes raises a clear error
    (or, with ``strict=False``, is skipped and counted)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _fail_or_skip(
                    strict,
                    stats,
                    f"{path}:{number}",
                    f"not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    "MIND files must be UTF-8 encoded",
                )
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not data
            text = text.rstrip("\r\n")
            if text.strip():
                yield number, text


def read_news(
    paths: Sequence[str | Path], strict: bool = True, stats: ReadStats | None = None
) -> dict[str, NewsRecord]:
    """Read one or more ``news.tsv`` files into ``{news_id: NewsRecord}``.

    Later files may repeat ids of earlier ones (MIND splits share news); the first row wins
    when the repeated row has the same title, and a repeated id with another title is an error
    naming both places (ids must identify one news item).
    """
    stats = stats if stats is not None else ReadStats()
    news: dict[str, NewsRecord] = {}
    where: dict[str, str] = {}
    for path in map(Path, paths):
        for number, line in _lines(path, strict, stats):
            cols = line.split("\t")
            if len(cols) != NEWS_COLUMNS:
                _fail_or_skip(
                    strict,
                    stats,
                    f"{path}:{number}",
                    f"wrong number of columns: expected {NEWS_COLUMNS}, found {len(cols)}",
                )
                continue
            if not cols[0]:
                _fail_or_skip(strict, stats, f"{path}:{number}", "empty news id")
                continue
            if cols[0] not in news:
                news[cols[0]] = NewsRecord(*cols)
                where[cols[0]] = f"{path}:{number}"
            elif news[cols[0]].title != cols[3]:
                _fail_or_skip(
                    strict,
                    stats,
                    f"{path}:{number}",
                    f"news id {cols[0]!r} repeated with another title (first at {where[cols[0]]})",
                )
    return news


def _parse_candidates(
    field_text: str, where: str
) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """Parse ``N1-1 N2-0`` (labelled) or ``N1 N2`` (unlabelled)."""
    items = field_text.split()
    if not items:
        raise DataError(f"{where}: impression has no candidates", "no candidates")
    has_labels = ["-" in item for item in items]
    if any(has_labels) and not all(has_labels):
        raise DataError(f"{where}: some candidates have labels and some do not", "mixed labels")
    if not all(has_labels):
        return tuple(items), None
    ids, labels = [], []
    seen: dict[str, str] = {}
    for item in items:
        news_id, _, label = item.rpartition("-")
        if label not in ("0", "1"):
            raise DataError(
                f"{where}: label must be 0 or 1, found {label!r} in {item!r}", "label not 0/1"
            )
        if seen.get(news_id, label) != label:
            raise DataError(
                f"{where}: candidate {news_id!r} listed twice with labels 0 and 1",
                "contradictory labels",
            )
        seen[news_id] = label
        ids.append(news_id)
        labels.append(int(label))
    return tuple(ids), tuple(labels)


def _parse_impression(
    cols: list[str], where: str, news: dict[str, NewsRecord], stats: ReadStats
) -> Impression:
    candidates, labels = _parse_candidates(cols[4], where)
    unknown = [c for c in candidates if c not in news]
    if unknown:
        raise DataError(
            f"{where}: unknown news id {unknown[0]!r}: no news.tsv lists it",
            "unknown candidate news id",
        )
    history = []
    for news_id in cols[3].split():
        if news_id in news:
            history.append(news_id)
        else:
            stats.dropped_history_ids += 1
    return Impression(cols[0], cols[1], cols[2], tuple(history), candidates, labels)


def read_behaviors(
    path: str | Path,
    news: dict[str, NewsRecord],
    strict: bool = True,
    stats: ReadStats | None = None,
) -> list[Impression]:
    """Read ``behaviors.tsv``; candidates must exist in ``news``, history ids may be dropped."""
    stats = stats if stats is not None else ReadStats()
    path = Path(path)
    impressions = []
    for number, line in _lines(path, strict, stats):
        where = f"{path}:{number}"
        cols = line.split("\t")
        if len(cols) != BEHAVIORS_COLUMNS:
            _fail_or_skip(
                strict,
                stats,
                where,
                f"wrong number of columns: expected {BEHAVIORS_COLUMNS}, found {len(cols)}",
            )
            continue
        try:
            impressions.append(_parse_impression(cols, where, news, stats))
        except DataError as exc:
            if strict:
                raise
            stats.skip(exc.kind)
    return impressions


def split_news_paths(split_dirs: Sequence[str | Path]) -> list[Path]:
    """The ``news.tsv`` of every split folder (token tables cover all splits' news)."""
    return [Path(d) / "news.tsv" for d in split_dirs]
