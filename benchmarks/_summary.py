"""Render benchmarks/results/*.json as one Markdown table (for the README).

Usage: ``python benchmarks/_summary.py`` prints, for every results file, each
target with its measured value, its bar and whether it was met, plus the date
and machine the file records.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary() -> str:
    lines = ["| benchmark | target | measured | bar | met | date, machine |", "|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        where = f"{d.get('date', '?')}, {d.get('machine', '?')}"
        for name, t in (d.get("targets") or {}).items():
            met = "yes" if t.get("met") else "**no**"
            lines.append(f"| {d['name']} | {name} | {_fmt(t.get('value'))} | {_fmt(t.get('bar'))} | {met} | {where} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())
