"""Atomic file writes: a reader never sees a half-written file.

A write goes to a temporary file ``.<name>.<8 random characters>.tmp`` in the same
directory, is flushed and fsynced, then renamed over ``<name>``. The file is created
with mode ``0666 & ~umask``, as ``open(path, "w")`` would. A write that is killed
leaves its temporary file behind; :func:`temp_target` recognises one, so whoever owns
the directory (a run directory, see :mod:`torchslim.rundir`) can remove it.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> atomic_write_text(f"{tmp.name}/notes.txt", "hello").read_text()
    'hello'
    >>> temp_target(".notes.txt.k2j_8x0q.tmp"), temp_target("notes.txt")
    ('notes.txt', None)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: A temporary file of :func:`atomic_write_bytes`: ``.<name>.<8 characters of mkstemp>.tmp``.
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp", re.DOTALL)


def current_umask() -> int:
    """The process's file mode creation mask (read without changing it where the system allows).

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def temp_target(name: str) -> str | None:
    """The file name a leftover temporary file of :func:`atomic_write_bytes` was to become, or ``None``.

    Example:
        >>> temp_target(".state.json.abcd_123.tmp"), temp_target(".state.json.tmp")
        ('state.json', None)
    """
    match = _TEMP.fullmatch(name)
    return match.group("name") if match else None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync, rename.

    The file gets mode ``0666 & ~umask`` (``mkstemp`` alone would give ``0600``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            mode = 0o666 & ~current_umask()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:  # pragma: no cover - Windows before Python 3.13
                os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
