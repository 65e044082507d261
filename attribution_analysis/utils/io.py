"""Atomic file writes, so an interrupted run never leaves a half-written output or checkpoint."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and then atomically rename ``tmp_path`` to ``path``.

    The temporary file lives in the destination folder so the rename stays on one file system.
    If ``write`` raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; NaN and infinities become ``null`` (bare
    ``NaN`` is not JSON)."""
    text = json.dumps(_finite(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically (load it back with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def timestamped_dir(root: str | os.PathLike, prefix: str = "run") -> Path:
    """``<root>/<prefix>_<YYYYmmdd_HHMMSS>`` (not created): the name of a new run folder."""
    return Path(root) / f"{prefix}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


class UnreadableFileError(ValueError):
    """A file that exists but cannot be read back (truncated, corrupt, or refused by safe
    loading)."""


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``; a truncated, corrupt or
    unsafe file raises :class:`UnreadableFileError` naming the file and the reason in one line
    (safe loading never runs pickled code)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip (or a binary pickle)
        why = "the file is empty" if not head else "not a file written by torch.save"
        raise UnreadableFileError(f"{path}: not a readable {what} ({why})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UnreadableFileError(f"{path}: not a readable {what} ({_why(exc)})") from None


_REFUSED = "WeightsUnpickler error:"


def _why(exc: Exception) -> str:
    """The first sentence of why ``torch.load`` failed, after "truncated or corrupt" (torch's
    own words, e.g. ``OSError: [Errno 22] Invalid argument`` for some truncations, do not say
    so); for a file that safe loading refused, what it refused (not torch's advice to load the
    file unsafely)."""
    text = str(exc)
    if _REFUSED in text:
        return "refused by safe loading: " + _first_sentence(text.split(_REFUSED, 1)[1])
    return f"truncated or corrupt: {type(exc).__name__}: {_first_sentence(text)}"


def _first_sentence(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line.split(". ")[0][:200]
