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


# -- issue 19: hostile and careless input -----------------------------------------------------------------
def clean(res, code=2):
    """Exit ``code`` with a message and no traceback (an unexpected exception would be res.exception)."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res.output


def test_evaluate_refuses_out_of_range_options():
    base = ["evaluate", "--model", "zoo:mlp", "--data", "digits"]
    out = clean(runner.invoke(app, [*base, "--threads", "1000000"]))
    assert "--threads: Input should be less than or equal to 256 (got 1000000)" in out
    out = clean(runner.invoke(app, [*base, "--runs", "0", "--batch-size", "-1", "--threads", "0"]))
    assert "3 error(s) in the command line" in out and "--runs" in out and "--batch-size" in out
    assert "--runs: Input should be less than or equal to 10000" in clean(runner.invoke(app, [*base, "--runs", "10000000"]))


def test_evaluate_refuses_models_that_do_not_fit_the_data(tmp_path, monkeypatch):
    out = clean(runner.invoke(app, ["evaluate", "--model", "zoo:lenet5", "--data", "digits"]))
    assert "zoo model lenet5 needs images of at least 16x16; the data has 1x8x8 inputs" in out
    assert "standard library" in clean(runner.invoke(app, ["evaluate", "--model", "math:pi", "--data", "digits"]))
    (tmp_path / "rw_cli_models.py").write_text(
        "from torch import nn\npi = 3.14\ndef number():\n    return 3.0\ndef wide():\n    return nn.Linear(784, 10)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        out = clean(runner.invoke(app, ["evaluate", "--model", "rw_cli_models:number", "--data", "digits"]))
        assert "returned float, not an nn.Module" in out
        out = clean(runner.invoke(app, ["evaluate", "--model", "rw_cli_models:pi", "--data", "digits"]))
        assert "is a float, not a function" in out
        out = clean(runner.invoke(app, ["evaluate", "--model", "rw_cli_models:wide", "--data", "digits"]))
        assert "cannot take --data digits inputs (1x8x8): mat1 and mat2 shapes cannot be multiplied" in out
    finally:
        __import__("sys").modules.pop("rw_cli_models", None)


def test_evaluate_fills_in_what_the_data_decides():
    res = runner.invoke(app, ["evaluate", "--model", "zoo:lenet300", "--data", "digits", "--runs", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert re.search(r"Parameters\s+│\s+50,610", res.output)  # in_features 64 from the 8x8 digits


def test_run_output_naming_an_existing_file_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodel: {name: zoo:lenet300, args: {in_features: 64}}\ndata: digits\nstages: [{type: train}]\n")
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert "is a file, not a directory" in clean(runner.invoke(app, ["run", str(p), "--output", str(f)]))
    p.write_text(p.read_text() + f"output: {f}\n")
    assert "the recipe's output" in clean(runner.invoke(app, ["run", str(p)]))
    assert "is a file, not a directory" in clean(runner.invoke(app, ["demo", "--output", str(f)]))
    assert f.read_text() == "keep me"


def test_validate_prints_the_first_100_errors_quickly(tmp_path):
    p = tmp_path / "many.yaml"
    p.write_text("name: m\nmodel: zoo:mlp\ndata: digits\nstages:\n  - type: distill\n    hints: [" + ",".join(["1"] * 5000) + "]\n")
    t0 = __import__("time").perf_counter()
    out = clean(runner.invoke(app, ["validate", str(p)]))
    assert __import__("time").perf_counter() - t0 < 5
    assert "5000 error(s)" in out and "stages.0.hints.99:" in out and "stages.0.hints.100:" not in out
    assert "... and 4900 more" in out


def test_names_and_paths_are_printed_as_plain_text(tmp_path):
    p = tmp_path / "[bold]x[red].yaml"
    p.write_text('name: "[/]"\nmodel: zoo:mlp\ndata: digits\nstages:\n  - {type: train, name: "[red]\\x1b]0;pwned\\x07", epochs: 1}\n')
    out = clean(runner.invoke(app, ["validate", str(p)]))
    assert "[bold]x[red].yaml" in out and "stages.0.name: must be plain text" in out and "\x1b" not in out
    p.write_text("name: '[b]'\nmodel: zoo:mlp\ndata: digits\nstages:\n  - {type: train, name: '[/]', epochs: 1}\n")
    out = clean(runner.invoke(app, ["validate", str(p)]), code=0)
    assert "[bold]x[red].yaml: valid (1 stages: train)" in out


def test_exit_codes(tmp_path, monkeypatch):
    import torchslim.recipe

    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmodel: zoo:mlp\ndata: digits\nstages: [{type: train}]\n")

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(torchslim.recipe, "load_recipe", interrupted)
    assert "interrupted" in clean(runner.invoke(app, ["run", str(p)]), code=130)
    assert clean(runner.invoke(app, ["evaluate", "--model", "zoo:mlp"]), code=2)  # a usage error: missing --data
