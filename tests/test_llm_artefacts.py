"""Issue 23's data, perplexity and artefacts: corpora, the perplexity protocol, MatMulNBits ONNX, HF directories.

Everything runs on tiny random Llama models built offline; the corpus tests need the Debian
packages ``dict-devil`` and ``jargon-text`` and are skipped, with the reason, without them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from torchslim.data import corpora
from torchslim.data.corpora import (
    EVAL_TOKENS,
    HELDOUT_TOKENS,
    CharTokenizer,
    calibration_tokens,
    corpus_tokens,
    evaluation_tokens,
    heldout_tokens,
    read_corpus,
    tokenize_text,
)
from torchslim.errors import DataNotFoundError, TorchslimError
from torchslim.llm.export_hf import CODES_FILE, RECORD_KEY, pack_int32, save_quantized_pretrained
from torchslim.llm.export_onnx import (
    MS_DOMAIN,
    OrtCausalLM,
    export_int4_onnx,
    fuse_parallel_matmuls,
    pack_matmulnbits,
    time_decode,
    time_prefill,
)
from torchslim.llm.qweight import Grid, QuantizedWeight
from torchslim.measure.perplexity import perplexity, scored_spans

try:
    from torchslim.llm.modules import QuantizedLinear
except ImportError:  # the methods' module not there yet: a stand-in with the same interface
    class QuantizedLinear(nn.Module):  # type: ignore[no-redef]
        def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None) -> None:
            super().__init__()
            self.in_features, self.out_features = qw.shape[1], qw.shape[0]
            self.quantized_weight = qw
            self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

        @classmethod
        def from_weight(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> QuantizedLinear:
            return cls(qw, bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.quantized_weight.dequantize(), self.bias)


HAVE_CORPORA = all(c.path.is_file() for c in corpora.CORPORA.values())
needs_corpora = pytest.mark.skipif(
    not HAVE_CORPORA, reason="Debian packages dict-devil and jargon-text not installed (apt-get install dict-devil jargon-text)"
)
VOCAB = 128


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """hidden 96 and FFN 160: at group 64 every layer's last group is narrower (96 = 64 + 32, 160 = 64 + 64 + 32)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=24, max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def quantize(model: nn.Module, grid: Grid) -> nn.Module:
    """A copy of ``model`` with every Linear but ``lm_head`` rounded to ``grid`` (RTN)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name != "lm_head":
            parent, _, leaf = name.rpartition(".")
            qw = QuantizedWeight.from_float(module.weight, grid)
            setattr(model.get_submodule(parent), leaf, QuantizedLinear.from_weight(qw, module.bias))
    return model.eval()


@pytest.fixture(scope="module")
def float_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def int4(float_model: LlamaForCausalLM) -> nn.Module:
    return quantize(float_model, Grid(bits=4, group_size=64, symmetric=False))


def torch_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---- the perplexity protocol ----


def test_uniform_logits_give_the_vocabulary_size() -> None:
    r = perplexity(lambda ids: torch.zeros(*ids.shape, 77), torch.arange(1000) % 77, window=100, progress=False)
    assert math.isclose(r.ppl, 77.0, rel_tol=1e-6)
    assert (r.windows, r.tokens_scored) == (10, 990)


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, None), (10, 4, 2), (100, 16, 5), (100, 16, 16), (33, 8, 20)])
def test_each_scored_token_is_scored_once(n: int, window: int, stride: int | None) -> None:
    spans = scored_spans(n, window, stride)
    positions = [p for _, first, stop in spans for p in range(first, stop)]
    assert len(positions) == len(set(positions))
    step = window if stride is None else stride
    assert len(spans) == (n - window) // step + 1
    assert all(stop - start == window and start < first for start, first, stop in spans)
    if step < window:  # overlapping: every token after the first up to the last whole window
        assert positions == list(range(1, spans[-1][2]))
    if step == window:  # the protocol's default: each window's first token is not scored
        assert len(positions) == len(spans) * (window - 1)


def test_hf_model_matches_the_mean_of_window_losses(float_model: LlamaForCausalLM) -> None:
    tokens = torch.randint(VOCAB, (200,), generator=torch.Generator().manual_seed(3))
    r = perplexity(float_model, tokens, window=64, progress=False)
    with torch.no_grad():
        losses = [float(float_model(input_ids=w[None], labels=w[None]).loss) for w in tokens[:192].view(3, 64)]
    assert math.isclose(r.nll, sum(losses) / 3, rel_tol=1e-5)
    assert (r.windows, r.tokens_scored) == (3, 189)  # tokens 192..199 are after the last whole window
    batched = perplexity(float_model, tokens, window=64, batch_size=2, progress=False)
    assert math.isclose(batched.nll, r.nll, rel_tol=1e-6)


def test_callables_and_training_mode(float_model: LlamaForCausalLM) -> None:
    tokens = torch.randint(VOCAB, (64,), generator=torch.Generator().manual_seed(4))
    model = copy.deepcopy(float_model).train()
    a = perplexity(model, tokens, window=32, progress=False)
    assert model.training
    b = perplexity(lambda ids: model(input_ids=ids).logits.detach().numpy(), tokens.numpy(), window=32, progress=False)
    assert math.isclose(a.ppl, b.ppl, rel_tol=1e-5)


def test_perplexity_refusals() -> None:
    uniform = lambda ids: torch.zeros(*ids.shape, 10)  # noqa: E731
    with pytest.raises(TorchslimError, match="fewer than one window"):
        perplexity(uniform, torch.zeros(5, dtype=torch.long), window=8, progress=False)
    with pytest.raises(TorchslimError, match="stride"):
        perplexity(uniform, torch.zeros(20, dtype=torch.long), window=8, stride=0, progress=False)
    with pytest.raises(TorchslimError, match=r"0\.\.9"):
        perplexity(uniform, torch.full((20,), 12), window=8, progress=False)
    with pytest.raises(TorchslimError, match="integer ids"):
        perplexity(uniform, torch.zeros(20), window=8, progress=False)


# ---- corpora ----


def test_missing_corpus_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(corpora.CORPORA, "devil", corpora.Corpus("devil", str(tmp_path / "nope.dz"), "dict-devil", "The Devil's Dictionary"))
    monkeypatch.setattr(corpora, "_TEXT_CACHE", {})
    with pytest.raises(DataNotFoundError, match="apt-get install dict-devil"):
        read_corpus("devil")


def test_a_hugging_face_tokenizer_adds_no_special_tokens() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<s>": 0, "<unk>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", unk_token="<unk>")
    assert tok("a b")["input_ids"] == [0, 2, 3]
    assert tokenize_text(tok, "a b c").tolist() == [2, 3, 1]


@needs_corpora
def test_evaluation_is_the_devils_dictionarys_first_tokens() -> None:
    tok = CharTokenizer()
    ev = evaluation_tokens(tok)
    assert ev.shape == (EVAL_TOKENS,) and ev.dtype == torch.int64
    assert bytes(ev.tolist()) == read_corpus("devil").encode()[:EVAL_TOKENS]
    with pytest.raises(TorchslimError, match="1..20480"):
        evaluation_tokens(tok, n=EVAL_TOKENS + 1)


@needs_corpora
@pytest.mark.parametrize("source", ["jargon", "devil-rest", "both"])
def test_calibration_is_deterministic_and_avoids_evaluation_and_heldout(source: str) -> None:
    tok = CharTokenizer()
    a = calibration_tokens(tok, 8, 64, seed=5, source=source)  # type: ignore[arg-type]
    assert torch.equal(a, calibration_tokens(tok, 8, 64, seed=5, source=source))  # type: ignore[arg-type]
    assert not torch.equal(a, calibration_tokens(tok, 8, 64, seed=6, source=source))  # type: ignore[arg-type]
    devil = bytes(corpus_tokens(tok, "devil")[EVAL_TOKENS:-HELDOUT_TOKENS].tolist())
    jargon = bytes(corpus_tokens(tok, "jargon")[:-HELDOUT_TOKENS].tolist())
    allowed = {"jargon": [jargon], "devil-rest": [devil], "both": [devil, jargon]}[source]
    for row in a:
        assert any(bytes(row.tolist()) in text for text in allowed)


@needs_corpora
def test_heldout_is_the_end_of_each_source() -> None:
    tok = CharTokenizer()
    held = heldout_tokens(tok, n=2 * HELDOUT_TOKENS, source="both")
    assert torch.equal(held[:HELDOUT_TOKENS], corpus_tokens(tok, "devil")[-HELDOUT_TOKENS:])
    assert torch.equal(held[HELDOUT_TOKENS:], corpus_tokens(tok, "jargon")[-HELDOUT_TOKENS:])
    with pytest.raises(TorchslimError, match="seq_len"):
        calibration_tokens(tok, 1, 10**7, source="jargon")


# ---- MatMulNBits ----


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    mask = (1 << bits) - 1
    values = np.stack([(packed >> (bits * j)) & mask for j in range(per)], axis=-1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matmulnbits_layout_with_a_narrow_last_block(bits: int) -> None:
    qw = QuantizedWeight.from_float(torch.randn(5, 96), Grid(bits=bits, group_size=64))
    b, scales, zeros = pack_matmulnbits(qw)
    assert b.shape == (5, 2, 64 * bits // 8) and scales.shape == (5, 2)
    codes = unpack(b, bits, 64).reshape(5, 128)
    assert np.array_equal(codes[:, :96], qw.codes.numpy())
    assert np.array_equal(codes[:, 96:], np.repeat(qw.zeros[:, 1:].numpy().astype(np.uint8), 32, axis=1))  # padding
    assert zeros is not None and np.array_equal(unpack(zeros, bits, 2), qw.zeros.numpy().astype(np.uint8))
    symmetric = QuantizedWeight.from_float(torch.randn(5, 96), Grid(bits=bits, group_size=64, symmetric=True))
    assert pack_matmulnbits(symmetric)[2] is None  # the operator's default zero point 2**(bits-1)


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_onnx_matches_the_torch_simulation(float_model: LlamaForCausalLM, symmetric: bool) -> None:
    model = quantize(float_model, Grid(bits=4, group_size=64, symmetric=symmetric))
    out, apart = export_int4_onnx(model), export_int4_onnx(model, fuse=False)
    assert isinstance(model.get_submodule("model.layers.0.self_attn.q_proj"), QuantizedLinear)  # put back
    nodes = [n for n in apart.proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == len(apart.layers) == 14 and all(n.domain == MS_DOMAIN for n in nodes)
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (96, 96, 4, 64)
    assert {len(n.input) for n in nodes} == ({3} if symmetric else {4})
    # fused: per block q/k/v one node (96 + 48 + 48 outputs), gate/up one, o and down alone; the float twin alike
    fused = [{a.name: a.i for a in n.attribute}["N"] for n in out.proto.graph.node if n.op_type == "MatMulNBits"]
    assert fused == [192, 96, 320, 96] * 2 and len(out.layers) == 14
    assert [n.op_type for n in out.fp32.graph.node].count("MatMul") == [n.op_type for n in apart.fp32.graph.node].count("MatMul") - 6
    ids = torch.randint(VOCAB, (2, 40), generator=torch.Generator().manual_seed(7))
    ref = torch_logits(model, ids)
    for proto in (out.proto, out.fp32, apart.proto, apart.fp32):  # int4 graphs and their float32 twins
        got = OrtCausalLM(proto, threads=1)(ids)
        assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    tokens = torch.randint(VOCAB, (256,), generator=torch.Generator().manual_seed(8))
    ppl_ort = perplexity(OrtCausalLM(out, threads=1), tokens, window=64, progress=False).ppl
    assert math.isclose(ppl_ort, perplexity(model, tokens, window=64, progress=False).ppl, rel_tol=1e-4)


@pytest.mark.parametrize("opset", [11, 17])
def test_fusion_keeps_outputs_and_leaves_weights_read_elsewhere(opset: int) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ws = {f"w{i}": rng.standard_normal((8, 3 + i)).astype(np.float32) for i in range(4)}
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(4)]
    nodes.append(helper.make_node("Identity", ["w3"], ["w3_copy"], name="mm0/fused"))  # w3 is read elsewhere: left alone;
    # and the fused node's first choice of name is taken
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, 3 + i]) for i in range(4)]
    outputs.append(helper.make_tensor_value_info("w3_copy", TensorProto.FLOAT, [8, 6]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
              helper.make_tensor_value_info("w2", TensorProto.FLOAT, [8, 5])]  # w2 may be fed: left alone
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(w, n) for n, w in ws.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = rng.standard_normal((2, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    before = run(model)
    assert fuse_parallel_matmuls(model) == 1  # w0 and w1 only
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("MatMul") == 3 and {"w2", "w3"} <= {i.name for i in model.graph.initializer}
    assert all(np.array_equal(a, b) for a, b in zip(before, run(model)))


def test_int4_onnx_with_cache_decodes_like_torch(int4: nn.Module, tmp_path: Path) -> None:
    out = export_int4_onnx(int4, tmp_path / "model.onnx", kv_cache=True)
    assert out.path is not None and out.path.stat().st_size == out.bytes()
    ort_model = OrtCausalLM(str(out.path), threads=1)
    ids = torch.randint(VOCAB, (1, 12), generator=torch.Generator().manual_seed(9))
    first = ort_model.session.run(None, ort_model.feed(ids[:, :10]))
    step = ort_model.session.run(None, ort_model.feed(ids[:, 10:12], first[1:]))
    ref = torch_logits(int4, ids)
    assert np.allclose(first[0], ref[:, :10].numpy(), atol=1e-4 * float(ref.abs().max()))
    assert np.allclose(step[0], ref[:, 10:].numpy(), atol=1e-4 * float(ref.abs().max()))
    assert time_prefill(out, tokens=8, threads=1, runs=1, warmup=0).runs == 1
    assert time_decode(out, prompt=4, new_tokens=2, threads=1).tokens_per_s > 0


def test_int4_onnx_refusals(float_model: LlamaForCausalLM) -> None:
    with pytest.raises(TorchslimError, match="no quantized layer"):
        export_int4_onnx(float_model)
    with pytest.raises(TorchslimError, match=r"layer model\.layers\.0\.self_attn\.q_proj: .*power of two"):
        export_int4_onnx(quantize(float_model, Grid(bits=4, group_size=48)))
    with pytest.raises(TorchslimError, match="takes 2, 4, 8 bits"):
        export_int4_onnx(quantize(float_model, Grid(bits=3, group_size=64)))


# ---- Hugging Face directories ----

RELOAD = """
import json, math, sys
import torch, transformers
d = sys.argv[1]
ids = torch.tensor(json.loads(sys.argv[2]))
model = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
with torch.no_grad():
    logits = model(input_ids=ids).logits
    loss = float(model(input_ids=ids, labels=ids).loss)
print(json.dumps({"logits": logits[0, :4, :4].tolist(), "ppl": math.exp(loss),
                  "torchslim": any(m.startswith("torchslim") for m in sys.modules)}))
"""


def test_dequantized_directory_reloads_with_transformers_alone(int4: nn.Module, tmp_path: Path) -> None:
    out = save_quantized_pretrained(int4, None, tmp_path / "hf")
    assert {"config.json", "model.safetensors", CODES_FILE, "torchslim_export.json"} <= set(out.files)
    ids = torch.randint(VOCAB, (1, 48), generator=torch.Generator().manual_seed(10))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", RELOAD, str(out.path), json.dumps(ids.tolist())],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert not got["torchslim"]
    with torch.no_grad():
        ppl = math.exp(float(int4(input_ids=ids, labels=ids).loss))
    assert math.isclose(got["ppl"], ppl, rel_tol=1e-3)
    assert np.allclose(got["logits"], torch_logits(int4, ids)[0, :4, :4].numpy(), atol=1e-5)
    config = json.loads((out.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config[RECORD_KEY]["config_groups"]["group_0"]["weights"]["group_size"] == 64
    codes = safetensors.torch.load_file(str(out.path / CODES_FILE))
    qw = int4.get_submodule("model.layers.1.mlp.down_proj").quantized_weight
    assert torch.equal(codes["model.layers.1.mlp.down_proj.codes"], qw.codes)


def test_a_quantized_tied_head_is_untied_and_both_artefacts_keep_it(float_model: LlamaForCausalLM, tmp_path: Path) -> None:
    from torchslim.llm import rtn_

    model = copy.deepcopy(float_model)
    twin = LlamaForCausalLM(model.config)  # another model on the same config object: stays tied
    report = rtn_(model, {"bits": 4, "group_size": 64, "targets": {"re:model\\.layers\\..*": {}, "lm_head": {}}})
    head = next(layer for layer in report.layers if layer.name == "lm_head")
    assert head.details["untied_from"] == ["model.embed_tokens.weight"] and not model.config.tie_word_embeddings
    assert twin.config.tie_word_embeddings and model.model.config is model.config
    assert torch.equal(model.model.embed_tokens.weight, float_model.model.embed_tokens.weight)  # the input side stays float
    ids = torch.randint(VOCAB, (1, 48), generator=torch.Generator().manual_seed(11))
    ref = torch_logits(model, ids)
    out = export_int4_onnx(model)
    assert len(out.layers) == 15 and "lm_head" in out.layers
    assert float((OrtCausalLM(out, threads=1)(ids) - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    saved = save_quantized_pretrained(model, None, tmp_path / "hf")  # reloads untied: the quantized head, not the embeddings
    reloaded = LlamaForCausalLM.from_pretrained(str(saved.path)).eval()
    assert torch.allclose(torch_logits(reloaded, ids), ref, atol=1e-5)


def test_compressed_tensors_layout(float_model: LlamaForCausalLM, tmp_path: Path) -> None:
    model = quantize(float_model, Grid(bits=4, group_size=32, symmetric=False))
    out = save_quantized_pretrained(model, None, tmp_path / "ct", format="compressed-tensors")
    state = safetensors.torch.load_file(str(out.path / "model.safetensors"))
    qw = model.get_submodule("model.layers.0.mlp.down_proj").quantized_weight
    packed = state["model.layers.0.mlp.down_proj.weight_packed"]
    assert packed.dtype == torch.int32 and packed.shape == (96, 20)
    assert np.array_equal(unpack(packed.numpy().view(np.uint8), 4, 160), qw.codes.numpy())
    assert state["model.layers.0.mlp.down_proj.weight_zero_point"].shape == (12, 5)
    assert state["model.layers.0.mlp.down_proj.weight_shape"].tolist() == [96, 160]
    assert "model.layers.0.mlp.down_proj.weight" not in state
    config = json.loads((out.path / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "pack-quantized")
    assert pack_int32(np.arange(8, dtype=np.uint8)[None], 4).view(np.uint32)[0, 0] == 0x76543210
    with pytest.raises(TorchslimError, match="not a multiple of its group_size 64"):
        save_quantized_pretrained(quantize(float_model, Grid(4, 64)), None, tmp_path / "ct64", format="compressed-tensors")


def test_hf_directory_refusals(float_model: LlamaForCausalLM, int4: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(TorchslimError, match="no quantized layer"):
        save_quantized_pretrained(float_model, None, tmp_path / "f")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(TorchslimError, match="did not write"):
        save_quantized_pretrained(int4, None, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
