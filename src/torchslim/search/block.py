"""A recipe's ``search:`` block: its stages (training, say) run first, then the search, ending with the chosen plan.

``torchslim run`` on a recipe with a ``search:`` block runs the recipe's own stages
(if any) into the run directory as usual, then :func:`~torchslim.search.api.search` from
the last checkpoint, with the block as the search's config, into ``<run>/search``: the
study, the Pareto front, ``chosen.yaml`` and its replay (``<run>/search/replay``: the
model after the chosen plan's stages, and its report on the test split).

Example:
    >>> from torchslim.recipe import parse_recipe
    >>> r = parse_recipe({"name": "s", "model": "zoo:lenet300", "data": "digits", "search": {"budget": 0.5}})
    >>> len(r.stages), r.search
    (0, {'budget': 0.5})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from torchslim.errors import TorchslimError
from torchslim.pipeline import run_recipe
from torchslim.recipe import Recipe
from torchslim.rundir import checkpoint_name, run_directory
from torchslim.search.api import search

__all__ = ["run_searched"]


def run_searched(recipe: Recipe, *, output: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                 console: Console | None = None, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the recipe's stages, then its ``search:`` block from the result (see the module docstring)."""
    if recipe.search is None:
        raise TorchslimError(f"recipe {recipe.name!r} has no search: block; run it with run_recipe")
    out = run_directory(recipe.name, recipe.output, output)
    model = recipe.model.to_data()
    if recipe.stages:
        if recipe.model.hf is not None:
            raise TorchslimError(
                f"recipe {recipe.name!r}: a search: block after stages needs a zoo or entry-point model; for a Hugging Face "
                "model, give the trained directory as the model and no stages"
            )
        run_recipe(recipe.model_copy(update={"search": None}), output=out, resume=resume, overwrite=overwrite,
                   console=console, device=device, progress=progress)
        last = len(recipe.stages) - 1
        model = {**model, "weights": str((out / f"{checkpoint_name(last, recipe.stages[last].type)}.safetensors").resolve())}
    head = {"name": recipe.name, "seed": recipe.seed, "model": model, "data": recipe.data.to_data(),
            "measure": recipe.measure.model_dump(exclude={"version"})}
    return search(head, recipe.search, out=out / "search", progress=progress)
