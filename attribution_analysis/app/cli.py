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


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Run ``main``; expected errors print ``prog: error: ...`` and exit with status 2."""
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {_RESUME['hint']}", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
