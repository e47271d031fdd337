"""Hostile and careless recipes (issue 19): every one is refused by ``load_recipe`` with one clear ConfigError."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from torchslim.errors import ConfigError, TorchslimError
from torchslim.measure import MAX_THREADS, MeasureArgumentError, num_threads
from torchslim.recipe import MAX_ALIASES, MAX_DEPTH, MAX_RECIPE_BYTES, load_recipe, parse_recipe
from torchslim.train import TrainConfig
from torchslim.zoo.spec import call_entry_point, data_args, entry_point_problem, input_problem

HEAD = "name: t\nmodel: {name: zoo:lenet300, args: {in_features: 64}}\ndata: digits\n"
GOOD = HEAD + "stages:\n  - {type: train, epochs: 1}\n"


def recipe(**changes: object) -> dict:
    base: dict = {"name": "t", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits",
                  "stages": [{"type": "train", "epochs": 1}]}
    return {**base, **changes}


def refused(target: object) -> str:
    """The message of the ConfigError that reading or parsing ``target`` raises."""
    with pytest.raises(ConfigError) as info:
        load_recipe(target) if isinstance(target, Path) else parse_recipe(target)
    return str(info.value)


def write(tmp_path: Path, text: str | bytes, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text, encoding="utf-8")
    return p


# -- defect 4: threads ---------------------------------------------------------------------------------
def test_threads_are_bounded_in_the_recipe_and_in_num_threads():
    assert "measure.threads: Input should be less than or equal to 256" in refused(recipe(measure={"threads": 1_000_000}))
    assert "measure.threads" in refused(recipe(measure={"threads": 0}))
    assert parse_recipe(recipe(measure={"threads": MAX_THREADS})).measure.threads == MAX_THREADS
    before = __import__("torch").get_num_threads()
    for bad in (10**6, 0, -1, True, 2.0):
        with pytest.raises(MeasureArgumentError, match="threads must be an integer in 1..256") as info:
            with num_threads(bad):  # type: ignore[arg-type]
                pass
        assert isinstance(info.value, TorchslimError) and isinstance(info.value, ValueError)
    assert __import__("torch").get_num_threads() == before


# -- defect 6: YAML ------------------------------------------------------------------------------------
def test_billion_laughs_is_refused_fast_also_inside_model_args(tmp_path):
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
    )
    in_args = HEAD.replace("args: {in_features: 64}", "args: {x: &a [1,1,1,1,1,1,1,1,1,1], y: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                           "z: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], w: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], v: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}")
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    for text, expected in ((laughs, "with its aliases expanded"), (in_args + "stages: [{type: train}]\n", "aliases expanded"),
                           (many, f"more than {MAX_ALIASES} aliases"), ("a: &a [*a]\n", "recursive alias")):
        t0 = time.perf_counter()
        assert expected in refused(write(tmp_path, text))
        assert time.perf_counter() - t0 < 2


def test_yaml_merge_keys_and_a_few_aliases_still_work(tmp_path):
    text = HEAD + "stages:\n  - &t {type: train, epochs: 1}\n  - {<<: *t, type: finetune, lr: 0.01}\n"
    r = load_recipe(write(tmp_path, text))
    assert [s.type for s in r.stages] == ["train", "finetune"] and r.stages[1].config.epochs == 1


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path):
    msg = refused(write(tmp_path, GOOD + "seed: 1\nseed: 2\n"))
    assert "duplicate key 'seed' (lines 6 and 7)" in msg and "r.yaml" in msg
    assert "duplicate key 'epochs' (lines 1 and 1)" in refused(write(tmp_path, "stages: [{epochs: 1, epochs: 2}]\n"))


def test_nesting_big_integers_keys_and_tags(tmp_path):
    assert f"nested deeper than {MAX_DEPTH} levels" in refused(write(tmp_path, "a: " + "[" * 900 + "]" * 900 + "\n"))
    assert "an integer of 5000 characters" in refused(write(tmp_path, GOOD + "seed: " + "9" * 5000 + "\n"))
    assert "cannot read this int value" in refused(write(tmp_path, GOOD + "seed: 0x_\n"))
    assert "cannot read this bool value" in refused(write(tmp_path, GOOD + "seed: !!bool maybe\n"))
    assert "a key must be a string, got bool (quote it)" in refused(write(tmp_path, GOOD + "on: 1\n"))
    assert "a key must be a string, got int" in refused(write(tmp_path, "1: a\n"))
    for tag in ("!!binary aGk=", "!!timestamp 2020-01-01", "!!set {a}", "!!python/object:os.system x"):
        assert "invalid YAML" in refused(write(tmp_path, f"name: {tag}\n"))
    r = load_recipe(write(tmp_path, GOOD.replace("name: t", "name: 2020-13-45")))  # a date-like name stays text
    assert r.name == "2020-13-45"


def test_files_that_are_not_small_utf8_recipes(tmp_path):
    bad = refused(write(tmp_path, b"name: \xff\n"))
    assert "not UTF-8 text (byte 0xff at offset 6)" in bad and "r.yaml" in bad
    assert "is a directory" in refused(tmp_path)
    assert "is not a regular file" in refused(Path("/dev/zero"))
    os.mkfifo(tmp_path / "fifo")
    assert "is not a regular file" in refused(tmp_path / "fifo")
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert "Too many levels of symbolic links" in refused(tmp_path / "a")
    assert "at most 1,048,576 allowed" in refused(write(tmp_path, "# " + "x" * MAX_RECIPE_BYTES))
    assert "File name too long" in refused(tmp_path / ("x" * 300))
    syntax = refused(write(tmp_path, "name: [unclosed\n", "broken.yaml"))
    assert "invalid YAML" in syntax and 'broken.yaml", line 1, column 7' in syntax


# -- defect 7: numbers, names, model args, input shapes ---------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"seed": 2**63}, "seed: Input should be less than or equal to 4294967295"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"stages": [{"type": "train", "lr": 1e308}]}, "stages.0.lr: Input should be less than or equal to 1000000000000"),
        ({"stages": [{"type": "train", "lr": float("nan")}]}, "stages.0.lr: must be a finite number"),
        ({"stages": [{"type": "train", "weight_decay": float("inf")}]}, "stages.0.weight_decay: must be a finite number"),
        ({"stages": [{"type": "train", "epochs": 10**9}]}, "stages.0.epochs: Input should be less than or equal to 10000"),
        ({"stages": [{"type": "train", "batch_size": 10**9}]}, "stages.0.batch_size: Input should be less than or equal to 65536"),
        ({"stages": [{"type": "train", "seed": 2**63}]}, "stages.0.seed: Input should be less than or equal to 4294967295"),
        ({"measure": {"latency_runs": 10**30}}, "measure.latency_runs"),
        ({"measure": {"latency_runs": 1e12}}, "measure.latency_runs: Input should be less than or equal to 10000"),
        ({"measure": {"latency_batch": 10**6}}, "measure.latency_batch: Input should be less than or equal to 4096"),
        ({"stages": [{"type": "quantize", "calibration": {"batches": 10**12}}]}, "stages.0.calibration.batches: must be an integer in"),
        ({"stages": [{"type": "quantize", "calibration": {"seed": 2**40}}]}, "stages.0.calibration.seed: must be an integer in 0..4294967295"),
        ({"stages": [{"type": "prune", "sparsity": 0.5, "seed": 2**63}]}, "stages.0.seed: must be an integer in 0..4294967295"),
    ],
)
def test_every_number_is_bounded(changes, expected):
    assert expected in refused(recipe(**changes))


def test_train_config_bounds():
    assert TrainConfig.parse({"lr": 1e12}).lr == 1e12  # diverges cleanly (tests/train), not refused
    for bad in ({"lr": 1e13}, {"epochs": 10_001}, {"seed": 2**32}, {"gamma": 2.0}, {"weight_decay": 2.0}, {"max_steps": 10**10}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig.parse(bad)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "a\\b", "/abs", "a\x00b", "tab\there", "x" * 101, "é" * 101, "a\u202eb"])
def test_recipe_name_is_one_plain_path_component(name):
    assert "name: " in refused(recipe(name=name))


def test_stage_names_are_plain_text_of_bounded_length():
    assert parse_recipe(recipe(stages=[{"type": "train", "name": "[/] [bold red]x"}])).stages[0].label == "[/] [bold red]x"
    assert "stages.0.name: must be plain text" in refused(recipe(stages=[{"type": "train", "name": "a\x00"}]))
    assert "stages.0.name: is 300 characters long; at most 100" in refused(recipe(stages=[{"type": "train", "name": "x" * 300}]))
    assert "output: must be plain text" in refused(recipe(output="runs/a\x00b"))
    assert "stages: List should have at most 1000 items" in refused(recipe(stages=[{"type": "nope"}] * 5000))


def test_model_args_are_checked_against_the_builder():
    msg = refused(recipe(model={"name": "zoo:lenet300", "args": {"in_featurs": 64}}))
    assert "model.args: in_featurs: zoo model 'lenet300' takes no such argument; allowed: in_features, num_classes" in msg
    assert "image_size: must be an integer" in refused(recipe(model={"name": "zoo:lenet5", "args": {"image_size": "28"}}))
    assert "hidden: item 1 must be an integer in 1..65536" in refused(recipe(model={"name": "zoo:mlp", "args": {"hidden": [8, 0]}}))
    assert "pool: must be one of ['cls', 'mean']" in refused(recipe(model={"name": "zoo:transformer_encoder", "args": {"pool": "max"}}))


def test_zoo_models_are_checked_against_the_data_without_building():
    assert "zoo model lenet5 needs images of at least 16x16; the data has 1x8x8" in refused(recipe(model="zoo:lenet5"))
    msg = refused(recipe(model={"name": "zoo:lenet300", "args": {"in_features": 784}}))
    assert "takes in_features=784 values per sample; the data has 1x8x8 = 64 (data set 'digits')" in msg
    assert "in_channels=3" in refused(recipe(model={"name": "zoo:resnet_cifar", "args": {"in_channels": 3}}))
    assert "num_classes=5 outputs; the data has 10 classes" in refused(recipe(model={"name": "zoo:mlp", "args": {"num_classes": 5}}))
    assert "text encoder" in refused(recipe(model="zoo:minilm"))
    assert "not a multiple of patch_size 7" in refused(recipe(model={"name": "zoo:transformer_encoder", "args": {"image_size": 8}}))
    bad_teacher = [{"type": "distill", "teacher": {"name": "zoo:lenet5"}}]
    assert "stages.0.teacher: zoo model lenet5 needs images" in refused(recipe(stages=bad_teacher))
    # what the data decides is filled in, as in_channels and num_classes are
    assert parse_recipe(recipe(model="zoo:lenet300")).model.args == {}
    assert data_args("lenet300", {}, (1, 8, 8), 10) == {"num_classes": 10, "in_features": 64}
    assert data_args("lenet300", {}, (1, 28, 28), 10) == {"num_classes": 10}  # the default fits: unchanged
    assert input_problem("mlp", data_args("mlp", {}, (1, 8, 8), 10), (1, 8, 8), 10) is None


# -- defect 11: entry points -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("os:system", "module 'os' is part of the Python standard library"),
        ("builtins:eval", "standard library"),
        ("math:pi", "standard library"),
        ("subprocess:run", "standard library"),
        ("no_such_package_xyz.models:build", "module 'no_such_package_xyz' cannot be found"),
        ("torchslim.pipeline:build_model", "module 'torchslim.pipeline' is part of torchslim"),
        ("torchslim.zoo.nope:build", "module 'torchslim.zoo.nope' cannot be found"),
        ("torchslim.zoo..x:build", "is not a module path"),
    ],
)
def test_entry_points_are_checked_without_importing(name, expected):
    assert expected in refused(recipe(model=name))


def test_entry_point_lookup_does_not_run_package_code(tmp_path, monkeypatch):
    pkg = tmp_path / "rwpkg_sentinel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (pkg / "models.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(64, 10)\ndef bad():\n    return 3.0\nvalue = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert entry_point_problem("rwpkg_sentinel.models:build") is None
    assert "module 'rwpkg_sentinel.nope' cannot be found" in refused(recipe(model="rwpkg_sentinel.nope:build"))
    assert parse_recipe(recipe(model="rwpkg_sentinel.models:build")).model.name == "rwpkg_sentinel.models:build"
    assert not (tmp_path / "ran").exists()  # validation imported nothing
    try:
        assert isinstance(call_entry_point("rwpkg_sentinel.models:build", {}), __import__("torch").nn.Linear)
        assert (tmp_path / "ran").exists()  # building runs the code, like a script
        with pytest.raises(TorchslimError, match="returned float, not an nn.Module"):
            call_entry_point("rwpkg_sentinel.models:bad", {})
        with pytest.raises(TorchslimError, match="is a int, not a function"):
            call_entry_point("rwpkg_sentinel.models:value", {})
        with pytest.raises(TorchslimError, match="does not take these args: .*'width'; its parameters: \\(none\\)"):
            call_entry_point("rwpkg_sentinel.models:build", {"width": 3})
    finally:
        for mod in [m for m in sys.modules if m.startswith("rwpkg_sentinel")]:
            del sys.modules[mod]


def test_integers_too_long_to_print_are_refused_before_the_fields_see_them():
    msg = refused(recipe(seed=10**5000, stages=[{"type": "train", "lr": -(10**5000)}]))
    assert "seed: an integer of about 5000 digits" in msg and "stages.0.lr: an integer of about" in msg


# -- defect 12: a recipe with a huge number of errors stays fast -------------------------------------------
def test_a_recipe_of_200000_values_is_refused_fast(tmp_path):
    text = HEAD + "stages:\n  - type: distill\n    hints: [" + ",".join(["1"] * 200_000) + "]\n"
    t0 = time.perf_counter()
    assert "more than 10000 values" in refused(write(tmp_path, text))
    assert time.perf_counter() - t0 < 3
    t0 = time.perf_counter()
    msg = refused(write(tmp_path, HEAD + "stages:\n  - type: distill\n    hints: [" + ",".join(["1"] * 9000) + "]\n"))
    assert "9000 error(s)" in msg and time.perf_counter() - t0 < 3


def test_an_escape_beyond_the_last_code_point_is_a_clean_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text('name: "\\U001BECC5"\n', encoding="utf-8")  # PyYAML's scanner raises ValueError on it
    with pytest.raises(ConfigError, match="invalid YAML: ValueError"):
        load_recipe(path)
