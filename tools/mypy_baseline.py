"""mypy on src/ against a checked-in baseline that may only shrink.

``python tools/mypy_baseline.py check``: runs mypy; fails when an error is not in
``tools/mypy-baseline.txt`` (a new error) or when the baseline lists errors that
no longer occur (fixed: the baseline must shrink with them; run ``update``).
``python tools/mypy_baseline.py update``: rewrites the baseline from the current
errors; it refuses to add an error that is not already there.

Errors are keyed by file, error code and message, without line numbers, so
edits elsewhere in a file do not disturb the comparison.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tools" / "mypy-baseline.txt"
LINE = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: error: (?P<msg>.*?)(?:\s+\[(?P<code>[a-z-]+)\])?$")


def current() -> Counter[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "src/torchslim", "--no-color-output", "--no-error-summary", "--hide-error-context"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if proc.returncode not in (0, 1):
        sys.exit(f"mypy did not run (exit {proc.returncode}): {proc.stderr or proc.stdout}")
    keys = []
    for line in proc.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            keys.append(f"{m['file']}: [{m['code'] or '-'}] {m['msg']}")
    return Counter(keys)


def baseline() -> Counter[str]:
    if not BASELINE.exists():
        return Counter()
    return Counter(line for line in BASELINE.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#"))


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "check"
    now, base = current(), baseline()
    new, fixed = now - base, base - now
    if mode == "update":
        if new and BASELINE.exists():
            print("refusing to add errors to the baseline (fix them):\n" + "\n".join(sorted(new.elements())))
            return 1
        BASELINE.write_text(
            "# mypy errors accepted on src/ (tools/mypy_baseline.py); this file may only shrink\n"
            + "".join(f"{k}\n" for k in sorted(now.elements())), encoding="utf-8")
        print(f"baseline: {sum(now.values())} errors ({sum(fixed.values())} removed)")
        return 0
    if new:
        print(f"{sum(new.values())} new mypy error(s) not in the baseline:\n" + "\n".join(sorted(new.elements())))
    if fixed:
        print(f"{sum(fixed.values())} baseline error(s) no longer occur: run `python tools/mypy_baseline.py update`:\n"
              + "\n".join(sorted(fixed.elements())))
    if not new and not fixed:
        print(f"mypy: {sum(now.values())} errors, all in the baseline")
    return 1 if new or fixed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
