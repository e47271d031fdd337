"""Run directories (issue 19): the manifest, --force, names that would escape runs/, runs that failed at start,
leftover temporary files, encode files that name run files, and file modes."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

import torchslim.pipeline as pipeline_mod
import torchslim.report.model as report_model
from torchslim.cli import app
from torchslim.errors import ConfigError, TorchslimError
from torchslim.io.atomic import atomic_write_text, current_umask
from torchslim.pipeline import read_state, run_recipe
from torchslim.recipe import parse_recipe
from torchslim.rundir import MANIFEST_FILE, RunDir
from torchslim.stages.catalog import EncodeStage

RECIPE = {
    "name": "dirs",
    "seed": 2,
    "model": {"name": "zoo:mlp", "args": {"in_features": 64, "hidden": [16]}},
    "data": "digits",
    "measure": {"latency_batch": 8, "latency_runs": 1, "eval_batch": 512},
    "stages": [
        {"type": "train", "epochs": 1, "lr": 0.1, "batch_size": 64},
        {"type": "prune", "sparsity": 0.5, "keep_first_last": False},
        {"type": "encode", "file": "m.tslim"},
    ],
}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_html(monkeypatch):
    """These tests are about files, not renderings: the HTML report without its plots (the slow part of a run)."""
    monkeypatch.setattr(report_model, "to_html", lambda report: "<html></html>")


def manifest(out):
    return set(json.loads((out / MANIFEST_FILE).read_text())["files"])


def listing(path):
    return sorted(p.name for p in path.iterdir())


def test_the_manifest_lists_every_file_before_it_is_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace
    written = []

    def spy(src, dst, *args, **kwargs):  # every atomic write ends in os.replace
        dst = os.fspath(dst)
        if os.path.dirname(dst) == str(out) and os.path.basename(dst) != MANIFEST_FILE:
            assert os.path.basename(dst) in manifest(out), f"{dst} written before the manifest listed it"
            written.append(os.path.basename(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    files = set(listing(out))
    assert files - {MANIFEST_FILE} <= manifest(out)
    assert {"recipe.json", "state.json", "m.tslim", "report.json", "stage-03-encode.safetensors"} <= set(written)


def test_force_deletes_only_manifest_files_and_refuses_listing_the_others(tmp_path):
    out = tmp_path / "run"
    run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / ".notes.txt.abcdefgh.tmp").write_text("a temporary file of mine, not the run's")
    before = listing(out)
    with pytest.raises(TorchslimError, match="did not write") as err:
        run_recipe(parse_recipe(RECIPE), output=out, overwrite=True, progress=False)
    assert "notes.txt" in str(err.value) and "sub" in str(err.value)
    assert listing(out) == before  # nothing deleted
    for name in ("notes.txt", ".notes.txt.abcdefgh.tmp"):
        (out / name).unlink()
    (out / "sub").rmdir()
    (out / "stage-02-prune.json").write_text("{}")  # a manifest file, whatever its content: deleted
    run_recipe(parse_recipe(RECIPE), output=out, overwrite=True, progress=False)
    assert read_state(out)["status"] == "complete"


@pytest.mark.parametrize("mode", ["plain", "resume", "force"])
def test_a_directory_without_a_manifest_is_never_written_nor_cleared(tmp_path, mode):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("report.json", "state.json", "thesis.tex"):  # looks like a run directory, but no manifest
        (out / name).write_text("{}")
    with pytest.raises(TorchslimError, match="no manifest.json"):
        run_recipe(parse_recipe(RECIPE), output=out, resume=mode == "resume", overwrite=mode == "force", progress=False)
    assert listing(out) == ["report.json", "state.json", "thesis.tex"]


def test_force_clears_a_run_directory_an_earlier_torchslim_wrote(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    recipe = {"stages": [{"type": "train"}, {"type": "encode", "file": "model.tslim"}]}
    (out / "recipe.json").write_text(json.dumps(recipe))
    for name in ("state.json", "stage-01-train.safetensors", "stage-01-train.json", "report.md", "model.tslim"):
        (out / name).write_text("{}")
    run_recipe(parse_recipe(RECIPE), output=out, overwrite=True, progress=False)  # adopted as its own files, cleared
    assert read_state(out)["status"] == "complete" and not (out / "model.tslim").exists()
    (out / MANIFEST_FILE).unlink()
    (out / "notes.txt").write_text("mine")  # not a file a run writes: the directory is refused again
    with pytest.raises(TorchslimError, match="no manifest.json"):
        run_recipe(parse_recipe(RECIPE), output=out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/../../b", "/tmp/abs", "a\0b", "", "x" * 300, "a\nb"])
def test_a_recipe_name_never_makes_run_write_outside_runs(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sentinel.txt").write_text("keep me")
    (tmp_path / "state.json").write_text("{}")  # what --force used to take as the sign of a run directory
    recipe = parse_recipe(RECIPE).model_copy(update={"name": name})  # bypasses validate's check of the name
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(TorchslimError):
            run_recipe(recipe, progress=False, **kwargs)
    assert listing(tmp_path) == ["sentinel.txt", "state.json"]
    assert (tmp_path / "sentinel.txt").read_text() == "keep me"


def test_dotdot_name_with_force_on_the_cli_leaves_the_working_directory_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sentinel.txt").write_text("keep me")
    text = json.dumps({**RECIPE, "name": ".."})
    (tmp_path / "r.yaml").write_text(text)
    for args in (["run", "r.yaml"], ["run", "r.yaml", "--force"], ["run", "r.yaml", "--force"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert listing(tmp_path) == ["r.yaml", "sentinel.txt"]
    assert (tmp_path / "r.yaml").read_text() == text


def test_a_name_whose_directory_is_a_symlink_out_of_runs_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "dirs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TorchslimError, match="outside runs"):
        run_recipe(parse_recipe(RECIPE), progress=False)
    assert listing(tmp_path / "elsewhere") == []


def _fail_at_start(monkeypatch):
    def boom(spec, data=None):
        raise TorchslimError("cannot import model entry point 'nowhere:build'")

    monkeypatch.setattr(pipeline_mod, "build_model", boom)


@pytest.mark.parametrize("mode", ["plain", "resume", "force"])
def test_a_run_that_failed_at_start_runs_again_without_cleanup(tmp_path, monkeypatch, mode):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _fail_at_start(m)
        with pytest.raises(TorchslimError, match="nowhere"):
            run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    state = read_state(out)
    assert state["status"] == "failed" and state["completed"] == [] and "nowhere" in state["error"]
    result = run_recipe(parse_recipe(RECIPE), output=out, resume=mode == "resume", overwrite=mode == "force", progress=False)
    assert read_state(out)["status"] == "complete" and result.report.after.sparsity > 0.4


@pytest.mark.parametrize("mode", ["plain", "resume", "force"])
def test_a_run_killed_before_its_first_state_runs_again(tmp_path, monkeypatch, mode):
    """Killed after recipe.json, before the first state.json: --resume and --force start it over."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        def killed(self, state):
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs

        m.setattr(RunDir, "write_state", killed)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    assert sorted(listing(out)) == [MANIFEST_FILE, "recipe.json"]
    (out / ".state.json.k2j_8x0q.tmp").write_text("half a state")  # a write the kill interrupted
    if mode == "plain":  # it might still be running: a plain run says how to start it over
        with pytest.raises(TorchslimError, match="may still be running.*--resume or --force"):
            run_recipe(parse_recipe(RECIPE), output=out, progress=False)
        return
    run_recipe(parse_recipe(RECIPE), output=out, resume=mode == "resume", overwrite=mode == "force", progress=False)
    assert read_state(out)["status"] == "complete"
    assert not any(n.endswith(".tmp") for n in listing(out))


@pytest.mark.parametrize("mode", ["plain", "resume", "force"])
def test_a_run_killed_while_writing_its_first_manifest_runs_again(tmp_path, mode):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".manifest.json.u7x_0k2a.tmp").write_text('{"format": "torchslim-run-manifest", "ver')
    run_recipe(parse_recipe(RECIPE), output=out, resume=mode == "resume", overwrite=mode == "force", progress=False)
    assert read_state(out)["status"] == "complete" and not any(n.endswith(".tmp") for n in listing(out))


def test_a_manifest_temporary_file_beside_other_files_is_not_a_run_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / ".manifest.json.u7x_0k2a.tmp").write_text("?")
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(TorchslimError, match="no manifest.json"):
        run_recipe(parse_recipe(RECIPE), output=out, overwrite=True, progress=False)
    assert listing(out) == [".manifest.json.u7x_0k2a.tmp", "thesis.tex"]


def test_leftover_temporary_files_are_removed_on_resume(tmp_path):
    out = tmp_path / "run"
    run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    temps = [".state.json.abc_1234.tmp", ".stage-02-prune.safetensors.zz99yy88.tmp", ".manifest.json.q1w2e3r4.tmp"]
    for name in temps:
        (out / name).write_bytes(b"x")
    run_recipe(parse_recipe(RECIPE), output=out, resume=True, progress=False)
    assert not set(temps) & set(listing(out))


def test_a_file_in_the_way_of_the_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    rd = RunDir(out)
    rd.claim(["recipe.json"])
    (out / "m.tslim").write_text("someone's file")
    with pytest.raises(TorchslimError, match="not written by this run"):
        rd.claim(["m.tslim"])
    assert manifest(out) == {"recipe.json"}
    recipe = parse_recipe(RECIPE)
    state = rd.start([], recipe.to_dict(), recipe.fingerprint())  # a run that failed at start, manifest without m.tslim
    rd.write_state({**state, "status": "failed"})
    with pytest.raises(TorchslimError, match="did not write"):
        run_recipe(recipe, output=out, progress=False)  # starting over clears only manifest files: refused
    assert (out / "m.tslim").read_text() == "someone's file"


@pytest.mark.parametrize(
    "file", ["state.json", "report.json", "report.html", "recipe.json", "manifest.json", "stage-01-train.json",
             "stage-03-encode.safetensors", "State.JSON", ".m.tslim.abcdefgh.tmp", "a\0b", "x" * 300, "..", "a/b"],
)
def test_encode_may_not_name_a_run_file(file):
    with pytest.raises(ConfigError, match=r"stages\.2\.file"):
        parse_recipe({**RECIPE, "stages": [*RECIPE["stages"][:2], {"type": "encode", "file": file}]})


def test_run_refuses_an_encode_file_that_slipped_past_validation(tmp_path):
    recipe = parse_recipe(RECIPE)
    recipe.stages[2].config = EncodeStage.model_construct(file="state.json", coding="huffman")
    with pytest.raises(TorchslimError, match="a file the run itself writes"):
        run_recipe(recipe, output=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_validate_refuses_an_encode_file_naming_a_run_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(json.dumps({**RECIPE, "stages": [{"type": "encode", "file": "report.json"}]}))
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 2 and "stages.0.file" in res.output and "run itself writes" in res.output


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
        assert current_umask() == umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
