"""Shared command-line plumbing: one clear line for expected errors, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from attribution_analysis.config import ConfigError
from attribution_analysis.data.mind import DataError

EXPECTED_ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, KeyError)
DEFAULT_RESUME_HINT = "rerun the same command to resume"
_RESUME = {"hint": DEFAULT_RESUME_HINT}


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (a flag gets the check its config key gets)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number > 0 (``nan`` and ``inf`` are refused)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def set_resume_hint(hint: str) -> None:
    """What the interrupt message tells the user to run to resume (set once a run folder
    exists, e.g. ``rerun with --run_dir <folder> to resume``)."""
    _RESUME["hint"] = hint


def run_cli(main: Callable[[], int | None], prog: str, debug: bool = False) -> int:
    """Run ``main``; expected errors print ``prog: error: ...`` and exit with status 2, and so
    do operating-system errors (an output folder that is a file, read-only, a full disk),
    naming the path. ``debug`` (the commands' ``--debug``) lets every error raise with its
    traceback instead."""
    set_resume_hint(DEFAULT_RESUME_HINT)  # a hint set by an earlier command does not carry over
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {_RESUME['hint']}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or exc
        if isinstance(exc, FileExistsError) and exc.filename and Path(exc.filename).is_file():
            reason = "is a file, not a folder"
        print(f"{prog}: error: {where}{reason} (rerun with --debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 2
