"""Hugging Face attention is exported in its eager form: no NaN guard, same outputs, config restored."""

import numpy as np
import onnx
import pytest
import torch

from torchslim.deploy import eager_attention, onnx_export_bytes, ort_feed, ort_session

transformers = pytest.importorskip("transformers")


def _tiny_bert(impl: str) -> torch.nn.Module:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


class _Pooled(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_sdpa_model_exports_without_nan_guard_and_matches_torch():
    model = _Pooled(_tiny_bert("sdpa"))
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0  # padding: the mask path is exercised
    example = {"input_ids": ids, "attention_mask": mask}
    data = onnx_export_bytes(model, example)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops
    assert model.bert.config._attn_implementation == "sdpa"  # restored
    with torch.no_grad():
        ref = model(**example).numpy()
    sess = ort_session(data, threads=1)
    out = sess.run(None, ort_feed(sess, example))[0]
    np.testing.assert_allclose(out[mask.bool().numpy()], ref[mask.bool().numpy()], rtol=1e-4, atol=1e-5)


def test_eager_attention_restores_on_error_and_ignores_plain_modules():
    bert = _tiny_bert("sdpa")
    with pytest.raises(RuntimeError), eager_attention(bert):
        assert bert.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    assert bert.config._attn_implementation == "sdpa"
    lin = torch.nn.Linear(2, 2)
    with eager_attention(lin):
        pass
