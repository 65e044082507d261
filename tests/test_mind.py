"""Tests of the MIND-format readers (news.tsv 8 columns, behaviors.tsv 5 columns)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attribution_analysis.data.mind import (
    DataError,
    NewsRecord,
    ReadStats,
    read_behaviors,
    read_news,
    split_news_paths,
)
from tests.helpers_foundation import behaviors_line, news_line, write_lines


@pytest.fixture
def news_path(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "train" / "news.tsv",
        [news_line("N1", "stocks fall"), news_line("N2", "coach wins"), news_line("N3", "rain")],
    )


@pytest.fixture
def news(news_path: Path) -> dict[str, NewsRecord]:
    return read_news([news_path])


def assert_names_line(exc: pytest.ExceptionInfo, path: Path, line: int) -> None:
    """The error message names the file and the 1-based line number."""
    message = str(exc.value)
    assert f"{path}:{line}:" in message, message


# --- news.tsv ---------------------------------------------------------------------------------


def test_news_reads_all_eight_columns(tmp_path: Path) -> None:
    row = "\t".join(
        ["N7", "sports", "football", "Title here", "", "https://u", '[{"Label": "X"}]', "[]"]
    )
    path = write_lines(tmp_path / "news.tsv", [row])
    news = read_news([path])
    assert news == {
        "N7": NewsRecord(
            "N7", "sports", "football", "Title here", "", "https://u", '[{"Label": "X"}]', "[]"
        )
    }


def test_news_from_several_files_are_merged_first_row_wins(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train" / "news.tsv", [news_line("N1", "same"), news_line("N2")])
    dev = write_lines(tmp_path / "dev" / "news.tsv", [news_line("N1", "same"), news_line("N9")])
    news = read_news([train, dev])
    assert set(news) == {"N1", "N2", "N9"}
    assert news["N1"].title == "same"
    assert split_news_paths([tmp_path / "train", tmp_path / "dev"]) == [train, dev]


def test_news_id_repeated_with_another_title_names_both_places(tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train" / "news.tsv", [news_line("N1", "old")])
    dev = write_lines(tmp_path / "dev" / "news.tsv", [news_line("N2"), news_line("N1", "new")])
    with pytest.raises(DataError) as exc:
        read_news([train, dev])
    assert f"{dev}:2" in str(exc.value) and f"{train}:1" in str(exc.value)


def test_utf8_byte_order_mark_is_not_part_of_the_first_id(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + (news_line("N1", "a title") + "\n").encode())
    assert set(read_news([path])) == {"N1"}


def test_news_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes((news_line("N1", "t1") + "\r\n\r\n" + news_line("N2", "t2") + "\r\n").encode())
    news = read_news([path])
    assert [n.title for n in news.values()] == ["t1", "t2"]
    assert news["N2"].abstract_entities == "[]"


@pytest.mark.parametrize("n_cols", [7, 9])
def test_news_wrong_column_count_names_file_and_line(tmp_path: Path, n_cols: int) -> None:
    bad = "\t".join(news_line("N2").split("\t")[:7] + ["[]"] * (n_cols - 7))
    path = write_lines(tmp_path / "news.tsv", [news_line("N1"), "", bad])
    with pytest.raises(DataError) as exc:
        read_news([path])
    assert_names_line(exc, path, 3)
    assert f"found {n_cols}" in str(exc.value) and "expected 8" in str(exc.value)


def test_news_missing_file() -> None:
    with pytest.raises(DataError, match="file not found"):
        read_news([Path("/nonexistent/news.tsv")])


def test_news_non_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes(
        (news_line("N1") + "\n").encode() + news_line("N2", "caf\xe9").encode("latin-1") + b"\n"
    )
    with pytest.raises(DataError) as exc:
        read_news([path])
    assert_names_line(exc, path, 2)
    assert "UTF-8" in str(exc.value)


def test_news_non_strict_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "news.tsv", [news_line("N1"), "N2\tonly\tthree", news_line("N3"), "x\ty"]
    )
    stats = ReadStats()
    news = read_news([path], strict=False, stats=stats)
    assert set(news) == {"N1", "N3"}
    assert stats.skipped == {"wrong number of columns": 2}
    assert "2 row(s) skipped: wrong number of columns" in stats.summary()


def test_news_non_strict_skips_non_utf8_rows(tmp_path: Path) -> None:
    path = tmp_path / "news.tsv"
    path.write_bytes(
        (news_line("N1") + "\n").encode()
        + news_line("N2", "caf\xe9").encode("latin-1")
        + b"\n"
        + (news_line("N3") + "\n").encode()
    )
    stats = ReadStats()
    news = read_news([path], strict=False, stats=stats)
    assert set(news) == {"N1", "N3"}
    assert sum(stats.skipped.values()) == 1
    assert "1 row(s) skipped" in stats.summary()


# --- behaviors.tsv ----------------------------------------------------------------------------


def test_behaviors_labelled_impression(tmp_path: Path, news) -> None:
    path = write_lines(
        tmp_path / "behaviors.tsv", [behaviors_line("7", ["N3", "N1"], "N1-1 N2-0 N3-0", "U9")]
    )
    (imp,) = read_behaviors(path, news)
    assert imp.impression_id == "7" and imp.user_id == "U9"
    assert imp.time == "11/11/2019 9:05:58 AM"
    assert imp.history == ("N3", "N1")  # oldest first, as written
    assert imp.candidates == ("N1", "N2", "N3")
    assert imp.labels == (1, 0, 0)


def test_behaviors_unlabelled_impression(tmp_path: Path, news) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", ["N1"], "N2 N3")])
    (imp,) = read_behaviors(path, news)
    assert imp.candidates == ("N2", "N3")
    assert imp.labels is None


def test_behaviors_empty_history(tmp_path: Path, news) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", [], "N1-0 N2-1")])
    (imp,) = read_behaviors(path, news)
    assert imp.history == ()
    assert imp.labels == (0, 1)


def test_behaviors_unknown_history_ids_dropped_and_counted(tmp_path: Path, news) -> None:
    path = write_lines(
        tmp_path / "behaviors.tsv",
        [
            behaviors_line("1", ["N1", "N404", "N2", "N405"], "N3-1 N1-0"),
            behaviors_line("2", ["N406"], "N3-0 N2-1"),
        ],
    )
    stats = ReadStats()
    first, second = read_behaviors(path, news, stats=stats)
    assert first.history == ("N1", "N2")
    assert second.history == ()
    assert stats.dropped_history_ids == 3
    assert "3 unknown history id(s) dropped" in stats.summary()
    assert not stats.skipped


@pytest.mark.parametrize("n_cols", [4, 6])
def test_behaviors_wrong_column_count(tmp_path: Path, news, n_cols: int) -> None:
    cols = behaviors_line("2", ["N1"], "N1-1 N2-0").split("\t")
    bad = "\t".join(cols[:4] if n_cols == 4 else [*cols, "extra"])
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", [], "N1-1 N2-0"), bad])
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 2)
    assert "expected 5" in str(exc.value) and f"found {n_cols}" in str(exc.value)


@pytest.mark.parametrize("item", ["N2-2", "N2-x", "N2-", "N2-01"])
def test_behaviors_label_not_0_or_1(tmp_path: Path, news, item: str) -> None:
    path = write_lines(
        tmp_path / "behaviors.tsv",
        [behaviors_line("1", [], "N1-1 N2-0"), "", behaviors_line("2", [], f"N1-1 {item}")],
    )
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 3)
    assert "0 or 1" in str(exc.value)


def test_behaviors_mixed_labelled_and_bare_candidates(tmp_path: Path, news) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", [], "N1-1 N2")])
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 1)


def test_behaviors_unknown_candidate(tmp_path: Path, news) -> None:
    path = write_lines(
        tmp_path / "behaviors.tsv",
        [behaviors_line("1", [], "N1-1 N2-0"), behaviors_line("2", [], "N1-0 N77-1")],
    )
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 2)
    assert "N77" in str(exc.value)


def test_behaviors_no_candidates(tmp_path: Path, news) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", ["N1"], " ")])
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 1)


def test_behaviors_non_utf8(tmp_path: Path, news) -> None:
    path = tmp_path / "behaviors.tsv"
    path.write_bytes(
        (behaviors_line("1", [], "N1-1 N2-0") + "\n").encode()
        + behaviors_line("2", [], "N1-1 N2-0", user_id="U\xff").encode("latin-1")
        + b"\n"
    )
    with pytest.raises(DataError) as exc:
        read_behaviors(path, news)
    assert_names_line(exc, path, 2)
    assert "UTF-8" in str(exc.value)


def test_behaviors_non_strict_skips_and_counts(tmp_path: Path, news) -> None:
    path = write_lines(
        tmp_path / "behaviors.tsv",
        [
            behaviors_line("1", ["N1"], "N1-1 N2-0"),
            "2\tU1\ttime\tN1",  # 4 columns
            behaviors_line("3", [], "N1-1 N2-7"),  # bad label
            behaviors_line("4", [], "N1-1 N99-0"),  # unknown candidate
            behaviors_line("5", [], "N1-1 N99-0"),  # unknown candidate
            behaviors_line("6", ["N404"], "N3-1 N2-0"),
        ],
    )
    stats = ReadStats()
    impressions = read_behaviors(path, news, strict=False, stats=stats)
    assert [imp.impression_id for imp in impressions] == ["1", "6"]
    assert sum(stats.skipped.values()) == 4
    assert stats.skipped["wrong number of columns"] == 1
    assert stats.skipped["label not 0/1"] == 1
    assert stats.skipped["unknown candidate news id"] == 2
    assert stats.dropped_history_ids == 1
    summary = stats.summary()
    assert re.search(r"1 row\(s\) skipped: wrong number of columns", summary), summary
    assert "2 row(s) skipped: unknown candidate news id" in summary
    assert "1 row(s) skipped: label not 0/1" in summary
    assert "1 unknown history id(s) dropped" in summary


def test_behaviors_non_strict_skips_non_utf8(tmp_path: Path, news) -> None:
    path = tmp_path / "behaviors.tsv"
    path.write_bytes(
        (behaviors_line("1", [], "N1-1 N2-0") + "\n").encode()
        + behaviors_line("2", [], "N1-1 N2-0", user_id="U\xff").encode("latin-1")
        + b"\n"
        + (behaviors_line("3", [], "N1-1 N2-0") + "\n").encode()
    )
    stats = ReadStats()
    impressions = read_behaviors(path, news, strict=False, stats=stats)
    assert [imp.impression_id for imp in impressions] == ["1", "3"]
    assert sum(stats.skipped.values()) == 1


def test_stats_shared_across_files_summary(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "news.tsv", [news_line("N1"), "bad"])
    stats = ReadStats()
    news = read_news([path], strict=False, stats=stats)
    beh = write_lines(tmp_path / "b.tsv", [behaviors_line("1", ["N0"], "N1-1"), "bad"])
    read_behaviors(beh, news, strict=False, stats=stats)
    assert stats.skipped == {"wrong number of columns": 2}
    assert stats.summary() == (
        "2 row(s) skipped: wrong number of columns; 1 unknown history id(s) dropped"
    )


def test_behaviors_candidate_listed_twice_with_both_labels(tmp_path: Path, news) -> None:
    path = write_lines(tmp_path / "behaviors.tsv", [behaviors_line("1", [], "N1-1 N2-0 N1-0")])
    with pytest.raises(DataError, match=r"behaviors.tsv:1: candidate 'N1' listed twice"):
        read_behaviors(path, news)
