"""The report's files: ``report.md``, ``report.html`` and ``report.json``, written atomically.

Example:
    >>> import tempfile
    >>> from torchslim.report import Report
    >>> tmp = tempfile.TemporaryDirectory()
    >>> paths = save(Report("demo"), tmp.name)
    >>> {kind: path.name for kind, path in paths.items()}
    {'md': 'report.md', 'html': 'report.html', 'json': 'report.json'}
    >>> read_report_json(tmp.name)["title"]
    'demo'
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_text

if TYPE_CHECKING:
    from torchslim.report.model import Report

#: Deepest nesting of lists and mappings a report (or run state) file may hold.
MAX_JSON_DEPTH = 64
#: Largest report file read, in bytes.
MAX_REPORT_BYTES = 256 * 2**20

#: File names written by :meth:`Report.save <torchslim.report.Report.save>`, keyed as in its return value.
REPORT_FILES: dict[str, str] = {"md": "report.md", "html": "report.html", "json": "report.json"}


def save(report: Report, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report.json`` into ``directory``, each atomically.

    Each file is written to a temporary file in the same directory, flushed,
    fsynced and moved into place with ``os.replace``, so a reader never sees a
    half-written report. The text is written as UTF-8 with ``\\n`` line ends on
    every platform. The directory is created if needed.

    Returns:
        ``{"md": path, "html": path, "json": path}``.

    Raises:
        TorchslimError: The report holds a value JSON cannot store (nothing is written then).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"json": report.to_json(), "md": report.to_markdown(), "html": report.to_html()}
    return {key: atomic_write_text(out / name, texts[key]) for key, name in REPORT_FILES.items()}


def check_json(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``value`` (parsed JSON) if its nesting and its integers are within bounds, else a :class:`TorchslimError`.

    Lists and mappings may nest at most ``max_depth`` levels and integers must fit in
    64 bits (floats are checked where they are read as figures). The walk does not
    recurse: a hostile file cannot exhaust the stack here nor, once this passed, in
    the renderers.

    Example:
        >>> check_json({"a": [1, 2.5, None]}, "report.json")
        {'a': [1, 2.5, None]}
        >>> check_json({"a": [[[]]]}, "report.json", max_depth=3)
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: report.json: a.0.0 is nested deeper than 3 levels
        >>> check_json({"n": 2**70}, "report.json")
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: report.json: n is an integer of 71 bits; at most 64 are allowed
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise TorchslimError(f"{what}: {path or '<root>'} is nested deeper than {max_depth} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k)) for k, v in pairs)
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            raise TorchslimError(
                f"{what}: {path or '<root>'} is an integer of {item.bit_length()} bits; at most 64 are allowed"
            )
    return value


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool).

    Example:
        >>> finite(1), finite(2.5), finite(float("inf")), finite(True), finite("1")
        (True, True, False, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json_file(path: Path, what: str, *, limit: int = MAX_REPORT_BYTES) -> Any:
    """Parse the JSON file ``path`` (UTF-8, at most ``limit`` bytes) and :func:`check_json` it.

    Raises:
        TorchslimError: naming ``what`` and the file: missing, a directory, too large,
            not UTF-8, not JSON, nested too deep or holding a too large integer.
    """
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise TorchslimError(f"cannot read {what} {str(path)!r}: it is a directory")
        if size > limit:
            raise TorchslimError(f"cannot read {what} {str(path)!r}: {size:,} bytes, more than the {limit:,} allowed")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TorchslimError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TorchslimError(f"cannot read {what} {str(path)!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise TorchslimError(f"cannot read {what} {str(path)!r}: nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, or an integer of more than 4300 digits
        raise TorchslimError(f"cannot read {what} {str(path)!r}: {exc}") from None
    return check_json(data, f"{what} {str(path)!r}")


def read_report_json(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of ``report.json`` (or of the one in directory ``path``), not yet checked.

    Its nesting and integers are bounded (:func:`check_json`).

    Raises:
        TorchslimError: The file is missing, is not UTF-8 JSON, or exceeds those bounds.
    """
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILES["json"]
    if not p.is_file():
        raise TorchslimError(f"no report at {str(p)!r}")
    return read_json_file(p, "report")
