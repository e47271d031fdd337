"""Run directories: where a run writes, what ``--force`` may delete, and what ``--resume`` trusts.

A run directory (``recipe.output``, ``--output``, or ``runs/<name>``) holds::

    manifest.json                 every file name this run writes, added BEFORE the file is written
    recipe.json                   the validated recipe, defaults filled in
    state.json                    status (starting | running | failed | interrupted | complete),
                                  the initial measurement and the completed stages
    stage-NN-<type>.safetensors   the checkpoint after each stage (+ its .json sidecar)
    <file>                        what a stage writes (the encode stage's .tslim)
    report.md / report.html / report.json

The rules that keep a user's files safe:

- a run directory named after the recipe (``runs/<name>``) is one plain path component
  (:func:`check_name`) and must resolve inside ``runs/``;
- ``--force`` deletes only files the manifest lists, and refuses, listing them, when
  anything else is in the directory; a non-empty directory without a manifest is never
  written into nor cleared;
- a run whose directory holds no completed stage (it failed or was killed at start) starts
  over on a plain run or ``--resume``;
- temporary files of interrupted atomic writes (``.<name>.XXXXXXXX.tmp``) of manifest files
  are removed by the next run or resume;
- every completed stage in ``state.json`` records its checkpoint's SHA-256 (tensors and
  sidecar) and the fingerprint of the recipe up to and including that stage; the sidecar's
  ``meta`` repeats the stage index and the fingerprint; :func:`check_state` and
  :func:`verify_checkpoints` refuse a resume whose chain does not hold.

Example:
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> rd = RunDir(tmp / "run")
    >>> rd.claim(["recipe.json", "notes.txt"])
    >>> _ = (tmp / "run" / "notes.txt").write_text("mine")
    >>> _ = (tmp / "run" / "yours.txt").write_text("yours")
    >>> rd.foreign()
    ['yours.txt']
    >>> try:
    ...     rd.clear()
    ... except TorchslimError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    it holds files this run did not write: 'yours.txt'; move them away or choose another output directory
    >>> (tmp / "run" / "yours.txt").unlink()
    >>> rd.clear()
    >>> sorted(p.name for p in (tmp / "run").iterdir())
    []
    >>> import shutil; shutil.rmtree(tmp)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torchslim.errors import CheckpointError, TorchslimError
from torchslim.io.atomic import atomic_write_text, temp_target
from torchslim.io.checkpoint import read_sidecar
from torchslim.measure.record import Measurement
from torchslim.report import Report
from torchslim.report.io import finite, read_json_file

MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.json"
RECIPE_FILE = "recipe.json"
#: Where a run directory named after its recipe lives.
RUNS_ROOT = Path("runs")
#: Longest name (UTF-8 bytes) of a run directory or a file a stage writes (temporary names add 14).
MAX_NAME_BYTES = 200
#: Largest state or manifest file read, in bytes.
MAX_STATE_BYTES = 256 * 2**20
MANIFEST_FORMAT = "torchslim-run-manifest"
_CHECKPOINT = re.compile(r"stage-\d+-.*", re.DOTALL)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _show(name: str) -> str:
    return repr(name) if len(name) <= 60 else repr(name[:57]) + "..."


def check_name(name: Any, what: str) -> str:
    """``name`` if it is one plain path component, else a :class:`TorchslimError` naming ``what``.

    Allowed: non-empty text of at most :data:`MAX_NAME_BYTES` UTF-8 bytes, not ``.`` or
    ``..``, without ``/``, ``\\`` or control characters (NUL, newline...).

    Example:
        >>> check_name("lenet-prune90", "recipe name")
        'lenet-prune90'
        >>> check_name("..", "recipe name")
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: recipe name '..': must be one plain file name: not '.' or '..'
    """
    if not isinstance(name, str) or not name:
        raise TorchslimError(f"{what} {name!r}: must be a non-empty string")
    problem = None
    if name in (".", ".."):
        problem = "not '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "no '/' or '\\'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "no control characters (NUL, newline, ...)"
    else:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            problem = "valid Unicode text"
        else:
            if size > MAX_NAME_BYTES:
                problem = f"at most {MAX_NAME_BYTES} bytes in UTF-8 (got {size})"
    if problem:
        raise TorchslimError(f"{what} {_show(name)}: must be one plain file name: {problem}")
    return name


def is_run_file(name: str) -> bool:
    """Whether ``name`` is (or could be) a file the run itself writes, case-insensitively.

    The manifest, ``state.json``, ``recipe.json``, ``report.*``, a checkpoint
    (``stage-NN-*``) or a temporary file of an atomic write.

    Example:
        >>> [is_run_file(n) for n in ("state.json", "Report.html", "stage-03-prune.json", "model.tslim")]
        [True, True, True, False]
    """
    low = name.casefold()
    return (
        low in (MANIFEST_FILE, STATE_FILE, RECIPE_FILE)
        or low.startswith("report.")
        or _CHECKPOINT.fullmatch(low) is not None
        or temp_target(name) is not None
    )


def checkpoint_name(index: int, stage_type: str) -> str:
    """The checkpoint stem of stage ``index`` (0-based).

    Example:
        >>> checkpoint_name(2, "prune")
        'stage-03-prune'
    """
    return f"stage-{index + 1:02d}-{stage_type}"


def _explicit(path: str | os.PathLike[str], what: str) -> Path:
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\0" in text:
        raise TorchslimError(f"{what} {text!r}: must be a non-empty path without NUL bytes")
    return Path(text)


def run_directory(name: str, recipe_output: str | None = None, output: str | os.PathLike[str] | None = None) -> Path:
    """The run directory: ``output`` (``--output``), else the recipe's ``output``, else ``runs/<name>``.

    A directory named after the recipe must be one plain component that resolves
    inside ``runs/`` (a symlink out of it is refused).

    Raises:
        TorchslimError: the name is not a plain file name, or resolves outside ``runs/``.

    Example:
        >>> run_directory("lenet")
        PosixPath('runs/lenet')
        >>> run_directory("../x")
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: recipe name '../x': must be one plain file name: no '/' or '\\'
    """
    if output is not None:
        return _explicit(output, "output directory")
    if recipe_output is not None:
        return _explicit(recipe_output, "the recipe's output")
    path = RUNS_ROOT / check_name(name, "recipe name")
    try:
        inside = path.resolve().parent == RUNS_ROOT.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise TorchslimError(f"run directory {path} (from the recipe's name) resolves outside {RUNS_ROOT}/; refusing to write there")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks.

    Raises:
        CheckpointError: the file is missing, a directory or unreadable.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def read_state(out: str | Path) -> dict[str, Any] | None:
    """The parsed ``state.json`` of run directory ``out`` (``None`` when there is none), not yet checked.

    Raises:
        CheckpointError: the file is unreadable, not UTF-8 JSON, or not a mapping.
    """
    path = Path(out) / STATE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = read_json_file(path, "run state", limit=MAX_STATE_BYTES)
    except TorchslimError as exc:  # names the file and what is wrong with it
        raise CheckpointError(str(exc)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"run state {path} is corrupt: expected a mapping, got {type(state).__name__}")
    return state


class RunDir:
    """A run directory and its manifest (the names of every file the run writes there).

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: set[str] | None = None

    def entries(self) -> list[str]:
        """The names in the directory (none when it does not exist)."""
        if not self.path.exists() and not self.path.is_symlink():
            return []
        if not self.path.is_dir():
            raise TorchslimError(f"output directory {self.path} exists and is not a directory")
        try:
            return sorted(os.listdir(self.path))
        except OSError as exc:
            raise TorchslimError(f"cannot list output directory {self.path}: {exc.strerror or exc}") from None

    def load_manifest(self) -> set[str] | None:
        """The manifest's file names (also kept in :attr:`files`), or ``None`` when there is no manifest.

        Raises:
            TorchslimError: the manifest is damaged (then nothing in the directory is touched).
        """
        path = self.path / MANIFEST_FILE
        if not path.exists() and not path.is_symlink():
            self.files = None
            return None
        data = read_json_file(path, "run manifest", limit=MAX_STATE_BYTES)
        names = data.get("files") if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TorchslimError(f"run manifest {path} is damaged; torchslim will not touch {self.path}: move its files away by hand")
        for n in names:
            check_name(n, f"run manifest {path}: file")
        self.files = set(names)
        return self.files

    def _owned(self, name: str) -> bool:
        files = (self.files or set()) | {MANIFEST_FILE}
        target = temp_target(name)
        return name in files or (target is not None and target in files)

    def foreign(self) -> list[str]:
        """Entries the manifest does not account for (a directory under a manifest name included)."""
        out = []
        for name in self.entries():
            p = self.path / name
            if not self._owned(name) or (p.is_dir() and not p.is_symlink()):
                out.append(name)
        return out

    def _write_manifest(self) -> None:
        data = {"format": MANIFEST_FORMAT, "version": 1, "files": sorted(self.files or ())}
        atomic_write_text(self.path / MANIFEST_FILE, json.dumps(data, indent=2))

    def claim(self, names: Iterable[str]) -> None:
        """Add ``names`` to the manifest (written atomically) before the run writes them.

        Raises:
            TorchslimError: a name is not a plain file name, or a file of that name is
                already there and is not the run's (it would be overwritten).
        """
        files = set(self.files or ())
        new = [check_name(n, "run file") for n in names if n not in files and n != MANIFEST_FILE]
        clash = [n for n in new if (self.path / n).exists() or (self.path / n).is_symlink()]
        if clash:
            raise TorchslimError(
                f"{self.path} already holds {', '.join(map(_show, clash))}, not written by this run; "
                "torchslim will not overwrite it: move it away or choose another output directory"
            )
        if new or self.files is None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.files = files | set(new)
                self._write_manifest()
            except OSError as exc:
                raise TorchslimError(f"cannot write the run manifest in {self.path}: {exc.strerror or exc}") from None

    def remove_temps(self) -> list[str]:
        """Remove leftover temporary files of interrupted atomic writes of the run's files; their names."""
        removed = [n for n in self.entries() if temp_target(n) is not None and self._owned(n)]
        removed = [n for n in removed if (self.path / n).is_symlink() or not (self.path / n).is_dir()]
        for name in removed:
            self._unlink(name)
        return removed

    def _unlink(self, name: str) -> None:
        try:
            (self.path / name).unlink(missing_ok=True)
        except OSError as exc:
            raise TorchslimError(f"cannot delete {self.path / name}: {exc.strerror or exc}") from None

    def clear(self) -> None:
        """Delete every manifest file (the manifest last); refuse, listing them, when anything else is there.

        Raises:
            TorchslimError: the directory holds entries the manifest does not list, or has no manifest.
        """
        entries = self.entries()
        if entries and self.files is None and self.load_manifest() is None:
            adopted = self.earlier_run_files(entries)
            if adopted is None:
                raise TorchslimError(self.no_manifest_message(entries))
            self.files = adopted
        others = self.foreign()
        if others:
            shown = ", ".join(map(_show, others[:10])) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
            raise TorchslimError(
                f"refusing to clear {self.path}: it holds files this run did not write: {shown}; "
                "move them away or choose another output directory"
            )
        for name in entries:
            if name != MANIFEST_FILE:
                self._unlink(name)
        self._unlink(MANIFEST_FILE)
        self.files = None

    def earlier_run_files(self, entries: list[str]) -> set[str] | None:
        """The files of a run directory an earlier torchslim wrote (no manifest), or ``None`` if it is not one.

        It is one when it holds its ``recipe.json`` and ``state.json`` and every entry is a
        regular file the run writes: a run file name (:func:`is_run_file`) or the file an
        ``encode`` stage of its ``recipe.json`` names. Anything else: ``None`` (refused).
        """
        if STATE_FILE not in entries or RECIPE_FILE not in entries:
            return None
        try:
            recipe = read_json_file(self.path / RECIPE_FILE, "run recipe", limit=MAX_STATE_BYTES)
        except TorchslimError:
            return None
        stages = recipe.get("stages") if isinstance(recipe, dict) else None
        encoded = {
            st["file"] for st in (stages if isinstance(stages, list) else [])
            if isinstance(st, dict) and st.get("type") == "encode" and isinstance(st.get("file"), str)
        }
        ok = all(
            (is_run_file(n) or n in encoded) and (self.path / n).is_file() and not (self.path / n).is_symlink()
            for n in entries
        )
        return set(entries) if ok else None

    def no_manifest_message(self, entries: list[str]) -> str:
        shown = ", ".join(map(_show, entries[:5])) + (" ..." if len(entries) > 5 else "")
        return (
            f"refusing to use {self.path}: it is not empty ({shown}) and has no {MANIFEST_FILE}, so it is not a "
            "torchslim run directory (or an older torchslim wrote it); torchslim writes into and clears only its own "
            "run directories: choose another output directory or empty this one yourself"
        )

    def start(self, names: Iterable[str], recipe_data: dict[str, Any], fingerprint: str) -> dict[str, Any]:
        """Begin a fresh run: claim ``names`` (and the manifest, recipe and state), write the recipe and the state."""
        self.claim([RECIPE_FILE, STATE_FILE, *names])
        atomic_write_text(self.path / RECIPE_FILE, json.dumps(recipe_data, indent=2))
        state: dict[str, Any] = {"fingerprint": fingerprint, "status": "starting", "completed": [], "initial": None}
        self.write_state(state)
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """Write ``state.json`` atomically."""
        atomic_write_text(self.path / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def _entry_problem(entry: Any, i: int, stage_type: str, fingerprint: str) -> str | None:
    """What is wrong with ``completed[i]`` of a state (the stage of type ``stage_type``), or ``None``."""
    where = f"completed.{i}"
    if not isinstance(entry, dict):
        return f"{where} must be a mapping, got {type(entry).__name__}"
    index = entry.get("index")
    if type(index) is not int or index != i:
        return f"{where}.index is {index!r}: completed stages must be listed once each, in order from 0"
    expected: list[tuple[str, Any, str]] = [
        ("type", stage_type, f"the recipe's stage {i + 1} is {stage_type!r}"),
        ("checkpoint", checkpoint_name(i, stage_type), f"expected {checkpoint_name(i, stage_type)!r}"),
        ("fingerprint", fingerprint, f"it does not match the recipe up to stage {i + 1}"),
    ]
    for key, want, why in expected:
        if entry.get(key) != want:
            return f"{where}.{key} is {entry.get(key)!r:.80}: {why}"
    for key in ("sha256", "sidecar_sha256"):
        if not isinstance(entry.get(key), str) or not _SHA256.fullmatch(entry[key]):
            return f"{where}.{key} must be a SHA-256 in hex (a state from an older torchslim has none)"
    if not isinstance(entry.get("label"), str):
        return f"{where}.label must be a string"
    if not finite(entry.get("seconds")):
        return f"{where}.seconds must be a finite number"
    try:
        if not isinstance(entry.get("measurement"), dict):
            raise TorchslimError("measurement must be a mapping")
        Measurement.from_dict(entry["measurement"])
        if not isinstance(entry.get("report"), dict):
            raise TorchslimError("report must be a mapping")
        Report.from_dict(entry["report"])
    except TorchslimError as exc:
        return f"{where}: {exc}"
    return None


def _layers_problem(layers: Any) -> str | None:
    if not isinstance(layers, list):
        return "initial_layers must be a list"
    for j, d in enumerate(layers):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not finite(d.get("nonzeros")):
            return f"initial_layers.{j} must be a mapping with a string 'name' and a number 'nonzeros'"
    return None


def check_state(state: dict[str, Any], out: Path, fingerprint: str, stages: list[tuple[str, str]]) -> dict[str, Any]:
    """``state`` if it chains with the recipe: ``stages`` is ``(type, fingerprint up to it)`` of each recipe stage.

    Raises:
        TorchslimError: the state was written by a different recipe.
        CheckpointError: the state is damaged: naming the field and what was expected.
    """
    if state.get("fingerprint") != fingerprint:
        raise TorchslimError(f"cannot resume {out}: it was started by a different recipe (stages or settings changed)")
    completed = state.get("completed")
    problem = None
    if not isinstance(completed, list):
        problem = f"completed must be a list, got {type(completed).__name__}"
    elif len(completed) > len(stages):
        problem = f"completed lists {len(completed)} stages; the recipe has {len(stages)}"
    elif not isinstance(state.get("status"), str):
        problem = "status must be a string"
    else:
        for i, entry in enumerate(completed):
            problem = _entry_problem(entry, i, *stages[i])
            if problem:
                break
    if problem is None:
        problem = _layers_problem(state.get("initial_layers", []))
    if problem is None and (state.get("initial") is not None or completed):
        try:
            Measurement.from_dict(state.get("initial"))  # type: ignore[arg-type]  # refuses a non-mapping itself
        except TorchslimError as exc:
            problem = f"initial: {exc}"
    if problem:
        raise CheckpointError(f"cannot resume {out}: {STATE_FILE} is damaged: {problem}")
    return state


def verify_checkpoints(out: Path, completed: list[dict[str, Any]]) -> None:
    """Check every completed stage's checkpoint: both files' SHA-256 and the sidecar's stage index and fingerprint.

    Raises:
        CheckpointError: naming the checkpoint that was replaced, damaged or is missing.
    """
    for entry in completed:
        stem = out / entry["checkpoint"]
        tensors, sidecar = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
        for path, key in ((tensors, "sha256"), (sidecar, "sidecar_sha256")):
            if path.is_symlink() or not path.is_file():
                raise CheckpointError(f"cannot resume {out}: checkpoint file {path.name} is missing or not a plain file")
            if file_sha256(path) != entry[key]:
                raise CheckpointError(
                    f"cannot resume {out}: checkpoint {path.name} is corrupt or was replaced: "
                    f"its SHA-256 does not match the one {STATE_FILE} recorded for stage {entry['index'] + 1}"
                )
        meta = read_sidecar(stem).get("meta")
        if not isinstance(meta, dict) or meta.get("stage") != entry["index"] or meta.get("fingerprint") != entry["fingerprint"]:
            raise CheckpointError(
                f"cannot resume {out}: checkpoint {sidecar.name} does not record stage {entry['index'] + 1} of this recipe"
            )


__all__ = [
    "MANIFEST_FILE", "MAX_NAME_BYTES", "RECIPE_FILE", "RUNS_ROOT", "STATE_FILE", "RunDir", "check_name",
    "check_state", "checkpoint_name", "file_sha256", "is_run_file", "read_state", "run_directory",
    "verify_checkpoints",
]
