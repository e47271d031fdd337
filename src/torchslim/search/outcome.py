"""What a search found: the trials, the Pareto front, the chosen plan (or the closest misses), and its files.

The chosen plan is the scored plan (a trial of the study, or a family alone) with the
smallest objective among those within the budget (and ``min_ratio``); ties go to the
smaller drop. When no trial meets the
budget, the answer is never empty: the closest plans are listed with how much each
misses, in accuracy points and in objective ratio. The Pareto front is every scored
trial that no other trial beats on both the objective and the drop.

Files written to the output directory (atomically): ``search.json`` (everything),
``pareto.md`` (the front and the families alone, as tables), ``pareto.png``, and
``chosen.yaml`` (the chosen plan's recipe, or ``closest.yaml`` when none meets the budget).

Example:
    >>> rows = [{"number": 0, "status": "ok", "drop": 0.5, "objective": 10.0},
    ...         {"number": 1, "status": "ok", "drop": 2.0, "objective": 4.0},
    ...         {"number": 2, "status": "ok", "drop": 2.5, "objective": 6.0}]
    >>> [r["number"] for r in pareto(rows)]
    [1, 0]
    >>> choose(rows, budget=1.0, baseline=20.0)[0]["number"]
    0
    >>> choose(rows, budget=0.1, baseline=20.0)[1][0]["miss_pt"]
    0.4
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from torchslim.io import atomic_write_bytes, atomic_write_text
from torchslim.report.plots import new_figure, png_bytes
from torchslim.search.plan import describe

__all__ = ["UNITS", "choose", "exact_drop", "pareto", "trial_rows", "write_outcome"]


def exact_drop(drop: float) -> float:
    """A drop in points rounded to 1e-9 (see :func:`torchslim.search.evaluate.accuracy_drop_pt`); also applied to drops read back from a
    study stored by an earlier version, so that a resumed search judges its finished trials the same way."""
    return round(float(drop), 9)


#: the objective's unit, as the tables show it
UNITS = {"bytes": "bytes", "macs": "MACs", "latency": "ms"}


def trial_rows(trials: list[Any]) -> list[dict[str, Any]]:
    """One plain row per finished Optuna trial (its plan, figures, status and reason)."""
    rows = []
    for t in trials:
        a = t.user_attrs
        status = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, t.state.name.lower())
        row = {"number": t.number, "status": status, "plan": a.get("plan", {}), "summary": describe(a.get("plan", {}))}
        for key in ("accuracy", "drop", "objective", "seconds", "stages", "reason", "measured_on"):
            if key in a:
                row[key] = exact_drop(a[key]) if key == "drop" else a[key]
        if status == "failed" and "reason" not in row:
            row["reason"] = "its worker stopped (killed or crashed) before it finished; the trial was run again"
        rows.append(row)
    return rows


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scored rows no other row beats on both objective and drop, by objective."""
    ok = sorted((r for r in rows if r.get("status") == "ok"), key=lambda r: (r["objective"], r["drop"]))
    front, best_drop = [], float("inf")
    for r in ok:
        if r["drop"] < best_drop:
            front.append(r)
            best_drop = r["drop"]
    return front


def choose(rows: list[dict[str, Any]], budget: float, baseline: float, min_ratio: float | None = None,
           closest: int = 3) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(chosen, closest misses)``: the best row within the budget, else the rows that miss it least."""
    ok = [r for r in rows if r.get("status") == "ok"]

    def ratio(r: dict[str, Any]) -> float:
        return baseline / r["objective"] if r["objective"] > 0 else float("inf")

    fits = [r for r in ok if r["drop"] <= budget and (min_ratio is None or ratio(r) >= min_ratio)]
    if fits:
        return min(fits, key=lambda r: (r["objective"], r["drop"])), []
    misses = []
    for r in ok:
        miss_pt = round(max(0.0, r["drop"] - budget), 6)
        miss_ratio = round(max(1.0, min_ratio / ratio(r)), 6) if min_ratio is not None else 1.0
        misses.append({**r, "miss_pt": miss_pt, "miss_ratio": miss_ratio})
    misses.sort(key=lambda r: (r["miss_pt"] + 100.0 * (r["miss_ratio"] - 1.0), r["objective"]))
    return None, misses[:closest]


def _figure(result: dict[str, Any]) -> bytes:
    fig = new_figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    ok = [r for r in result["trials"] if r.get("status") == "ok"]
    ax.scatter([r["objective"] for r in ok], [r["drop"] for r in ok], s=18, color="#9bb7d4", label="trials")
    front = result["pareto"]
    ax.plot([r["objective"] for r in front], [r["drop"] for r in front], marker="o", color="#1f4e79", label="Pareto front")
    singles = [r for r in result["singles"] if r.get("status") == "ok"]
    for fam in sorted({r["family"] for r in singles}):
        pts = [r for r in singles if r["family"] == fam]
        ax.plot([r["objective"] for r in pts], [r["drop"] for r in pts], marker="x", linestyle=":", label=f"{fam} alone")
    ax.axhline(result["budget"], color="#aa3333", linestyle="--", linewidth=1, label="budget")
    ax.axvline(result["baseline"]["objective"], color="#555555", linestyle=":", linewidth=1, label="unchanged")
    if result["chosen"] is not None:
        ax.scatter([result["chosen"]["objective"]], [result["chosen"]["drop"]], s=80, marker="*", color="#d08c00",
                   label="chosen", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel(f"{result['objective']} ({UNITS[result['objective']]})")
    ax.set_ylabel("accuracy drop on validation (points)")
    ax.set_title("Search: accuracy against the objective")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    """The front, the chosen plan (or closest misses) and each family alone, as Markdown tables."""
    unit = UNITS[result["objective"]]
    base = result["baseline"]["objective"]
    lines = [f"# Search: {result['objective']} under a {result['budget']} pt budget", "",
             f"Unchanged: validation accuracy {100 * result['baseline']['accuracy']:.2f} %, {result['objective']} "
             f"{_fmt(base)} {unit}. Trials: {len(result['trials'])}; search {result['timing'].get('search_s', 0):.0f} s.", ""]
    if result["chosen"] is not None:
        c = result["chosen"]
        which = f"trial {c['number']}" if isinstance(c["number"], int) else c["number"]
        lines += [f"**Chosen** ({which}): {c['summary']}: drop {c['drop']:.2f} pt, {_fmt(c['objective'])} {unit} "
                  f"({base / c['objective']:.2f}x smaller).", ""]
    else:
        lines += ["**No plan meets the budget.** The closest:", "", "| trial | plan | drop (pt) | misses by (pt) | misses ratio by |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['number']} | {r['summary']} | {r['drop']:.2f} | {r['miss_pt']:.2f} | {r['miss_ratio']:.3g}x |"
                  for r in result["closest"]]
        lines.append("")
    lines += ["## Pareto front", "", f"| trial | plan | val accuracy | drop (pt) | {result['objective']} ({unit}) | x smaller |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['number']} | {r['summary']} | {100 * r['accuracy']:.2f} % | {r['drop']:.2f} | {_fmt(r['objective'])} | "
              f"{base / r['objective']:.2f} |" for r in result["pareto"]]
    lines += ["", "## Each family alone, and the combination (same budget, same healing)", "",
              f"| plan | drop (pt) | {result['objective']} ({unit}) | x smaller |", "|---|---|---|---|"]
    for fam, r in result["alone"].items():
        lines.append(f"| {fam} alone: {r['summary']} | {r['drop']:.2f} | {_fmt(r['objective'])} | {base / r['objective']:.2f} |"
                     if r else f"| {fam} alone | none within the budget | | |")
    if result["chosen"] is not None:
        c = result["chosen"]
        lines.append(f"| combination: {c['summary']} | {c['drop']:.2f} | {_fmt(c['objective'])} | {base / c['objective']:.2f} |")
    for method, r in result["healing"].items():
        if r:
            lines.append(f"| best healed by {method}: {r['summary']} | {r['drop']:.2f} | {_fmt(r['objective'])} | "
                         f"{base / r['objective']:.2f} |")
    return "\n".join(lines) + "\n"


def write_outcome(result: dict[str, Any], out: Path, recipe: dict[str, Any] | None) -> list[Path]:
    """Write ``search.json``, ``pareto.md``, ``pareto.png`` and the recipe YAML into ``out``."""
    files = [atomic_write_text(out / "search.json", json.dumps(result, indent=1, default=str) + "\n"),
             atomic_write_text(out / "pareto.md", markdown(result)),
             atomic_write_bytes(out / "pareto.png", _figure(result))]
    if recipe is not None:
        name = "chosen.yaml" if result["chosen"] is not None else "closest.yaml"
        header = "# written by torchslim search: replay with `torchslim run " + name + "`\n"
        files.append(atomic_write_text(out / name, header + yaml.safe_dump(recipe, sort_keys=False)))
    return files
