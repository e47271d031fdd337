import re

from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.measure import FIELDS
from torchslim.zoo import create_model

runner = CliRunner()

BAD = """
name: bad
model: zoo:lenet301
data: digits
stages:
  - type: train
    epochss: 2
  - type: prune
    sparsity: 1.5
"""


def test_help_on_every_command():
    for cmd in ([], ["demo"], ["run"], ["validate"], ["evaluate"], ["report"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_validate_reports_all_three_mistakes(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(BAD)
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 2
    out = res.output
    assert "3 error(s)" in out
    assert "model.name: unknown zoo model 'lenet301'" in out
    assert "stages.0.epochss: unknown key" in out
    assert "stages.1.sparsity: Input should be less than 1 (got 1.5)" in out
    assert "Traceback" not in out


def test_validate_good_recipe(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("name: ok\nmodel: zoo:lenet5\ndata: mnist\nstages:\n  - {type: prune, sparsity: 0.5}\n")
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 0 and "valid (1 stages: prune)" in res.output


def test_evaluate_prints_every_figure():
    res = runner.invoke(app, ["evaluate", "--model", "zoo:lenet5", "--data", "mnist", "--runs", "3", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    for _, label, _ in FIELDS:
        assert label in res.output, label
    assert re.search(r"Parameters\s+│\s+431,080", res.output)


def test_bad_weights_file_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file(create_model("lenet300").state_dict(), str(tmp_path / "w.safetensors"))
    res = runner.invoke(app, ["evaluate", "--model", "zoo:lenet5", "--data", "digits", "--weights", str(tmp_path / "w.safetensors")])
    assert res.exit_code == 2 and "does not match the model architecture" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["evaluate", "--model", "zoo:nope", "--data", "digits"])
    assert res.exit_code == 2 and "unknown zoo model 'nope'" in res.output
    res = runner.invoke(app, ["evaluate", "--model", "zoo:lenet5", "--data", "cifar"])
    assert res.exit_code == 2 and "unknown data set 'cifar'" in res.output


def test_debug_shows_the_traceback(tmp_path):
    res = runner.invoke(app, ["--debug", "evaluate", "--model", "zoo:nope", "--data", "digits"])
    assert res.exit_code != 0 and res.exception is not None


def test_run_and_resume_via_cli(tmp_path):
    p = tmp_path / "r.yaml"
    out = tmp_path / "out"
    p.write_text(
        f"name: cli\noutput: {out}\nmodel: {{name: zoo:lenet300, args: {{in_features: 64}}}}\ndata: digits\n"
        "measure: {latency_batch: 8, latency_runs: 3}\n"
        "stages:\n  - {type: train, epochs: 2, lr: 0.05, batch_size: 64}\n  - {type: prune, sparsity: 0.5}\n"
    )
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 0, res.output
    assert "Accuracy" in res.output and (out / "report.html").exists()
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["run", str(p), "--resume"])  # everything done: just re-reports
    assert res.exit_code == 0, res.output
    (out / "stage-02-prune.safetensors").write_bytes(b"garbage")
    res = runner.invoke(app, ["run", str(p), "--resume"])
    assert res.exit_code == 2 and "corrupt" in res.output
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "Non-zeros" in res.output
