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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_text

if TYPE_CHECKING:
    from torchslim.report.model import Report

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


def read_report_json(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of ``report.json`` (or of the one in directory ``path``), not yet checked.

    Raises:
        TorchslimError: The file is missing or is not UTF-8 JSON.
    """
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILES["json"]
    if not p.is_file():
        raise TorchslimError(f"no report at {str(p)!r}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TorchslimError(f"cannot read report {str(p)!r}: {exc}") from None
