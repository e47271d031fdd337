"""ort_optimize fuses BERT-style self-attention into MultiHeadAttention.

With padding the fused graph gives the unfused graph's outputs bit for bit; without padding an ``If``
skips the all-zero mask (the fast kernel sums in another order: equal to float rounding).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchslim.deploy import OrtModel, export_fp32, export_qdq, ort_optimize, qdq_summary
from torchslim.quant import quantize_

transformers = pytest.importorskip("transformers")


class _Encoder(nn.Module):
    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        torch.manual_seed(0)
        self.bert = transformers.BertModel(cfg).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _inputs(batch: int = 4, seq: int = 12, seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch if padded else 0):  # padded rows of different lengths: the mask path is exercised
        mask[row, seq - 2 * row :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _mha_branches(proto: onnx.ModelProto) -> list[tuple[list[str], list[str]]]:
    """Inputs of the MultiHeadAttention in each If's (then, else) branch."""
    out = []
    for node in proto.graph.node:
        if node.op_type == "If":
            graphs = {a.name: a.g for a in node.attribute}
            then, other = (graphs[b].node[0] for b in ("then_branch", "else_branch"))
            assert then.op_type == other.op_type == "MultiHeadAttention"
            out.append((list(then.input), list(other.input)))
    return out


def test_fp32_bert_attention_fused_bit_exactly(tmp_path) -> None:
    model = _Encoder(layers=2)
    proto = export_fp32(model, _inputs())
    plain = ort_optimize(proto, fuse_attention=False)
    fused = ort_optimize(proto, tmp_path / "fused.onnx")
    ops = qdq_summary(fused)
    # one If per layer: MultiHeadAttention without the mask when it is all zero, with it otherwise
    assert ops.get("If") == 2 and ops.get("MultiHeadAttention") == 4
    assert "Softmax" not in ops and "Transpose" not in ops
    branches = _mha_branches(fused)
    assert all(len(then) == 3 and len(other) == 6 and other[:3] == then for then, other in branches)
    assert {p.key: p.value for p in fused.metadata_props}["torchslim.fused_attention"] == "2"
    assert qdq_summary(onnx.load(str(tmp_path / "fused.onnx"))) == ops  # written
    for seed, seq, padded in ((1, 12, True), (2, 20, True), (3, 12, False), (4, 20, False)):
        x = _inputs(seq=seq, seed=seed, padded=padded)
        out = OrtModel(fused, threads=1)(x).numpy()
        unfused = OrtModel(plain, threads=1)(x).numpy()
        if padded:  # the masked branch: the same sums as the unfused graph
            np.testing.assert_array_equal(out, unfused)
        else:  # the unmasked branch: another kernel, float rounding apart
            np.testing.assert_allclose(out, unfused, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            ref = model(**x).numpy()
        keep = x["attention_mask"].bool().numpy()
        np.testing.assert_allclose(out[keep], ref[keep], atol=1e-5)


def test_int8_bert_attention_fused_bit_exactly() -> None:
    model = _Encoder(layers=3)
    calibration = [_inputs(seed=s) for s in range(4)]
    quantize_(model, {"mode": "static", "activation": {"smooth": 0.5}}, calibration=calibration)
    proto = export_qdq(model, _inputs())
    plain, fused = ort_optimize(proto, fuse_attention=False), ort_optimize(proto)
    ops = qdq_summary(fused)
    assert ops.get("If") == 3 and ops.get("MultiHeadAttention") == 6 and "Softmax" not in ops
    assert ops["MatMulIntegerToFloat"] == qdq_summary(plain)["MatMulIntegerToFloat"] == 3 * 6
    # the context is still quantized once per layer, now after the fused node
    readers = {i for n in fused.graph.node for i in n.input}
    mha_out = [n.output[0] for n in fused.graph.node if n.op_type == "If"]
    quantizers = [n for n in fused.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in mha_out]
    assert len(quantizers) == 3 and all(o in readers for o in mha_out)
    x = _inputs(seed=9)
    np.testing.assert_array_equal(OrtModel(fused, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy())
    x = _inputs(seed=10, padded=False)  # float rounding apart before a quantizer may move it one step
    np.testing.assert_allclose(OrtModel(fused, threads=1)(x).numpy(), OrtModel(plain, threads=1)(x).numpy(), atol=0.05)


def test_the_mask_is_skipped_only_when_it_masks_nothing() -> None:
    """Each If takes its unmasked branch exactly when no token is padded: a branch changed on purpose
    (half the attention scale) shows in the outputs only for the inputs that take it."""
    proto = ort_optimize(export_fp32(_Encoder(layers=2), _inputs()))
    padded, full = _inputs(seed=5), _inputs(seed=6, padded=False)
    one_padded = _inputs(seed=6, padded=False)
    one_padded["attention_mask"][0, -1] = 0  # a single padded token is enough to need the mask
    reference = OrtModel(proto, threads=1)
    for branch, runs_for in (("then_branch", (full,)), ("else_branch", (padded, one_padded))):
        changed = onnx.ModelProto()
        changed.CopyFrom(proto)
        for node in changed.graph.node:
            if node.op_type == "If":
                mha = next(a.g for a in node.attribute if a.name == branch).node[0]
                scale = next(a for a in mha.attribute if a.name == "scale")
                scale.f *= 0.5
        model = OrtModel(changed, threads=1)
        for x in (padded, full, one_padded):
            same = np.array_equal(model(x).numpy(), reference(x).numpy())
            assert same == (not any(x is y for y in runs_for)), (branch, x["attention_mask"].sum())


def test_ort_optimize_runs_again_on_its_own_output() -> None:
    """Tensors read only inside the If branches stay alive through the passes' dead-node pruning."""
    proto = export_fp32(_Encoder(layers=2), _inputs())
    once = ort_optimize(proto)
    twice = ort_optimize(once)
    assert qdq_summary(twice) == qdq_summary(once)
    for x in (_inputs(seed=7), _inputs(seed=8, padded=False)):
        np.testing.assert_array_equal(OrtModel(twice, threads=1)(x).numpy(), OrtModel(once, threads=1)(x).numpy())


class _SingleHead(nn.Module):
    """Softmax attention without head reshapes: not the pattern, left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 4.0, dim=-1)
        return att @ self.v(x)


class _CrossAttention(nn.Module):
    """Heads reshaped as in BERT, but keys and values project another tensor: not self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], 2, 8).transpose(1, 2)

        scores = heads(self.q(x)) @ heads(self.k(memory)).transpose(-1, -2) * 8**-0.5
        context = torch.softmax(scores, dim=-1) @ heads(self.v(memory))
        return context.transpose(1, 2).reshape(b, s, 16)


@pytest.mark.parametrize("case", ["single_head", "cross_attention"])
def test_attention_that_is_not_the_pattern_is_left_alone(case: str) -> None:
    torch.manual_seed(0)
    if case == "single_head":
        model, example = _SingleHead().eval(), torch.randn(2, 6, 16)
    else:
        model, example = _CrossAttention().eval(), (torch.randn(2, 6, 16), torch.randn(2, 6, 16))
    proto = export_fp32(model, example)
    fused = ort_optimize(proto)
    assert "MultiHeadAttention" not in qdq_summary(fused) and "Softmax" in qdq_summary(fused)
    assert {p.key: p.value for p in fused.metadata_props}["torchslim.fused_attention"] == "0"
    assert qdq_summary(fused) == qdq_summary(ort_optimize(proto, fuse_attention=False))
