"""--resume verifies the chain of completed stages and refuses a damaged run directory cleanly (issue 19)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import torchslim.report.model as report_model
from torchslim.cli import app
from torchslim.errors import CheckpointError, TorchslimError
from torchslim.io.checkpoint import read_sidecar
from torchslim.pipeline import read_state, run_recipe, stage_fingerprints
from torchslim.recipe import parse_recipe
from torchslim.rundir import file_sha256

RECIPE = {
    "name": "chain",
    "seed": 5,
    "model": {"name": "zoo:mlp", "args": {"in_features": 64, "hidden": [16]}},
    "data": "digits",
    "measure": {"latency_batch": 8, "latency_runs": 1, "eval_batch": 512},
    "stages": [
        {"type": "train", "epochs": 2, "lr": 0.1, "batch_size": 64},
        {"type": "prune", "sparsity": 0.7, "keep_first_last": False},
        {"type": "finetune", "epochs": 1, "lr": 0.01, "batch_size": 64},
    ],
}
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _plain_html():
    """These tests are about files, not renderings: the HTML report without its plots (the slow part of a run)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(report_model, "to_html", lambda report: "<html></html>")
        yield


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain") / "run"
    result = run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    return out, result


@pytest.fixture
def run_dir(complete_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(complete_run[0], out)
    return out


def resume(out):
    return run_recipe(parse_recipe(RECIPE), output=out, resume=True, progress=False)


def edit_state(out, fn):
    state = json.loads((out / "state.json").read_text())
    fn(state)
    (out / "state.json").write_text(json.dumps(state))


def test_state_and_sidecars_record_the_chain(complete_run):
    out, _ = complete_run
    fps = stage_fingerprints(parse_recipe(RECIPE))
    assert fps[-1] == parse_recipe(RECIPE).fingerprint() and len(set(fps)) == 3
    for i, entry in enumerate(read_state(out)["completed"]):
        assert entry["index"] == i and entry["fingerprint"] == fps[i]
        assert entry["sha256"] == file_sha256(out / f"{entry['checkpoint']}.safetensors")
        meta = read_sidecar(out / entry["checkpoint"])["meta"]
        assert meta["stage"] == i and meta["fingerprint"] == fps[i]


def test_an_intact_run_resumes_to_the_same_model(complete_run, run_dir):
    edit_state(run_dir, lambda s: (s.update(status="interrupted"), s["completed"].pop()))
    result = resume(run_dir)
    ref = complete_run[1].model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in result.model.state_dict().items())


def test_stage_1_checkpoint_copied_over_stage_3_is_refused(run_dir):
    for ext in ("safetensors", "json"):
        shutil.copyfile(run_dir / f"stage-01-train.{ext}", run_dir / f"stage-03-finetune.{ext}")
    with pytest.raises(CheckpointError, match="stage-03-finetune.safetensors is corrupt or was replaced"):
        resume(run_dir)
    # with state.json's checksums edited to match, the sidecar's stage index still gives it away
    edit_state(run_dir, lambda s: s["completed"][2].update(
        sha256=file_sha256(run_dir / "stage-03-finetune.safetensors"),
        sidecar_sha256=file_sha256(run_dir / "stage-03-finetune.json"),
    ))
    with pytest.raises(CheckpointError, match="does not record stage 3"):
        resume(run_dir)


def test_stage_1_checkpoint_copied_over_stage_3_is_refused_by_the_cli(run_dir, tmp_path):
    for ext in ("safetensors", "json"):
        shutil.copyfile(run_dir / f"stage-01-train.{ext}", run_dir / f"stage-03-finetune.{ext}")
    (tmp_path / "r.yaml").write_text(json.dumps(RECIPE))
    res = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "--resume", "--output", str(run_dir)])
    assert res.exit_code == 2 and "was replaced" in res.output and "Traceback" not in res.output


def _dup(s):
    s["completed"][2] = dict(s["completed"][1])


def _swap(s):
    s["completed"][0], s["completed"][1] = s["completed"][1], s["completed"][0]


def _outside(s):
    s["completed"][1]["checkpoint"] = "../../elsewhere/stage-02-prune"


def _absolute(s):
    s["completed"][1]["checkpoint"] = "/tmp/stage-02-prune"


def _too_many(s):
    s["completed"].append(dict(s["completed"][2], index=3))


def _old_state(s):
    for e in s["completed"]:
        del e["sha256"]


def _other_prefix(s):
    s["completed"][0]["fingerprint"] = "0" * 64


CHAIN_BREAKS = {
    "a stage listed twice": (_dup, "index"),
    "stages out of order": (_swap, "index"),
    "a checkpoint outside the run directory": (_outside, "checkpoint"),
    "an absolute checkpoint path": (_absolute, "checkpoint"),
    "more stages than the recipe": (_too_many, "the recipe has 3"),
    "a state without checksums": (_old_state, "sha256"),
    "a stage of another recipe": (_other_prefix, "fingerprint"),
}


@pytest.mark.parametrize("case", list(CHAIN_BREAKS))
def test_a_state_that_does_not_chain_is_refused(run_dir, case):
    edit, fragment = CHAIN_BREAKS[case]
    edit_state(run_dir, edit)
    with pytest.raises(CheckpointError, match=fragment):
        resume(run_dir)


def _write(text):
    return lambda out: (out / "state.json").write_text(text)


def _state_dir(out):
    (out / "state.json").unlink()
    (out / "state.json").mkdir()


def _tensors_dir(out):
    (out / "stage-02-prune.safetensors").unlink()
    (out / "stage-02-prune.safetensors").mkdir()


def _sidecar_garbage(out):
    (out / "stage-01-train.json").write_text('{"format": "torchslim-checkpoint", "format_version": 1, "provenance": [[')


def _edit(fn):
    return lambda out: edit_state(out, fn)


DAMAGE = {
    "state a list": _write("[1, 2, 3]"),
    "state a string": _write('"complete"'),
    "state not UTF-8": lambda out: (out / "state.json").write_bytes(b'{"status": "\xff\xfe"}'),
    "state not JSON": _write("{status: complete"),
    "state nested deeply": _write("[" * 100_000 + "]" * 100_000),
    "state with a huge integer": _write('{"completed": [' + "9" * 5000 + "]}"),
    "state with a 100-digit integer": _edit(lambda s: s.update(initial={**s["initial"], "params": 10**100})),
    "state a directory": _state_dir,
    "completed a string": _edit(lambda s: s.update(completed="all")),
    "completed of numbers": _edit(lambda s: s.update(completed=[0, 1, 2])),
    "completed index a string": _edit(lambda s: s["completed"][0].update(index="0")),
    "completed index a bool": _edit(lambda s: s["completed"][1].update(index=True)),
    "completed measurement a list": _edit(lambda s: s["completed"][2].update(measurement=[1])),
    "completed measurement wrong types": _edit(lambda s: s["completed"][2]["measurement"].update(params="many")),
    "completed report wrong types": _edit(lambda s: s["completed"][2]["report"].update(layers={"fc": 1})),
    "completed seconds infinite": _edit(lambda s: s["completed"][0].update(seconds=float("inf"))),
    "completed label missing": _edit(lambda s: s["completed"][0].pop("label")),
    "initial missing": _edit(lambda s: s.update(initial=None)),
    "initial layers wrong": _edit(lambda s: s.update(initial_layers=[{"name": 3}])),
    "status a number": _edit(lambda s: s.update(status=3)),
    "a tensors file that is a directory": _tensors_dir,
    "a sidecar with garbage": _sidecar_garbage,
    "a missing checkpoint": lambda out: (out / "stage-03-finetune.safetensors").unlink(),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_of_a_damaged_run_directory_is_one_clean_error(run_dir, tmp_path, case):
    DAMAGE[case](run_dir)
    with pytest.raises(TorchslimError):
        resume(run_dir)
    (tmp_path / "r.yaml").write_text(json.dumps(RECIPE))
    res = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "--resume", "--output", str(run_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit)


def test_a_damaged_run_directory_can_still_be_cleared_with_force(run_dir):
    DAMAGE["state not UTF-8"](run_dir)
    run_recipe(parse_recipe(RECIPE), output=run_dir, overwrite=True, progress=False)
    assert read_state(run_dir)["status"] == "complete"
