"""Shared command-line plumbing: one clear line for expected errors, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from attribution_analysis.config import ConfigError
from attribution_analysis.data.mind import DataError

EXPECTED_ERRORS = (ConfigError, DataError, FileNotFoundError, ValueError, KeyError)
_RESUME = {"hint": "rerun the same command to resume"}


def set_resume_hint(hint: str) -> None:
    """What the interrupt message tells the user to run to resume (set once a run folder
    exists, e.g. ``rerun with --run_dir <folder> to resume``)."""
    _RESUME["hint"] = hint


def run_cli(main: Callable[[], int | None], prog: str, debug: bool = False) -> int:
    """Run ``main``; expected errors print ``prog: error: ...`` and exit with status 2, and so
    do operating-system errors (an output folder that is a file, read-only, a full disk),
    naming the path. ``debug`` (the commands' ``--debug``) lets every error raise with its
    traceback instead."""
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
        print(f"{prog}: error: {where}{exc.strerror or exc} (rerun with --debug for the "
              "traceback)", file=sys.stderr)  # fmt: skip
        return 2
