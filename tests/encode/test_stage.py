"""The share and encode stages in a recipe: the file, its size in the report, resume, and bad configs."""

import pytest
import torch

import torchslim as ts
from torchslim.encode.kmeans import get_codes, iter_shared
from torchslim.errors import ConfigError
from torchslim.pipeline import read_state, run_recipe
from torchslim.recipe import parse_recipe
from torchslim.stages import catalog as encode_stage

RECIPE = {
    "version": 1,
    "name": "digits-deep-compression",
    "seed": 0,
    "model": {"name": "zoo:mlp", "args": {"in_features": 64, "hidden": [64]}},
    "data": "digits",
    "measure": {"latency_runs": 2, "eval_batch": 512},
    "stages": [
        {"type": "train", "epochs": 8, "lr": 0.1, "batch_size": 64},
        {"type": "prune", "sparsity": 0.6, "keep_first_last": False},
        {"type": "share", "bits": 3, "finetune": {"epochs": 2, "lr": 0.01, "batch_size": 64}},
        {"type": "encode", "file": "digits.tslim"},
    ],
}


def test_pipeline_writes_a_tslim_file_that_loads_to_the_final_model(tmp_path):
    result = run_recipe(parse_recipe(RECIPE), output=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "digits.tslim"
    after = result.report.after
    assert after.bytes_file == path.stat().st_size
    assert after.bytes_file * 5 < after.bytes_dense  # 60% pruned + 3-bit codes
    assert result.report.before.accuracy - after.accuracy < 0.05
    loaded = ts.load(path)  # the recipe's zoo architecture, arguments included, is in the file
    x = torch.randn(16, 64)
    model = result.model.eval()
    assert torch.equal(model(x), loaded(x))
    assert all(int(get_codes(m).max()) < 8 for _, m, _, _ in iter_shared(loaded))
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Bytes on disk (.tslim)" in md


def test_resume_after_an_interrupted_encode_gives_the_same_file(tmp_path, monkeypatch):
    run_recipe(parse_recipe(RECIPE), output=tmp_path / "ref", progress=False)
    real = encode_stage.save

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(encode_stage, "save", interrupt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    assert [d["type"] for d in read_state(out)["completed"]] == ["train", "prune", "share"]
    monkeypatch.setattr(encode_stage, "save", real)
    run_recipe(parse_recipe(RECIPE), output=out, resume=True, progress=False)  # shared codes come back from the checkpoint
    assert (out / "digits.tslim").read_bytes() == (tmp_path / "ref" / "digits.tslim").read_bytes()


def test_bad_share_and_encode_settings_are_all_reported():
    bad = {
        **RECIPE,
        "stages": [
            {"type": "share", "bits": 40, "init": "kmeans++"},
            {"type": "encode", "file": "../escape.tslim", "coding": "zip"},
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_recipe(bad)
    text = str(err.value)
    for fragment in ("bits", "init", "file", "coding", "plain file name"):
        assert fragment in text, fragment
