"""The model-wide hidden width of Hugging Face encoders (BERT, ViT) pruned as one group (graph/hidden.py).

A LayerNorm over fewer channels is not the LayerNorm over all of them with the removed ones zeroed, so the
checks are by shape, forward, MACs, the config and a reload (exactness is checked where it holds: the reload).
"""

import pytest
import torch

from torchslim.graph.deps import dependency_groups
from torchslim.measure import count_macs
from torchslim.prune.hf import from_pretrained
from torchslim.prune.structured import prune_structured_

transformers = pytest.importorskip("transformers")

CHANNELS = {"granularity": "channel", "sparsity": 0.5, "scope": "layer", "round_to": 1, "keep_first_last": False}


def bert(cls=None):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3)
    return (cls or transformers.BertForSequenceClassification)(cfg).eval()


def vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()


def ids():
    return {"input_ids": torch.tensor([[1, 5, 7, 9, 2, 0], [3, 4, 8, 2, 0, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])}


@pytest.mark.parametrize("heads_first", [False, True])
def test_bert_classifier_hidden_width_is_one_group_and_reloads(heads_first, tmp_path):
    model, x = bert(), ids()
    macs0 = count_macs(model, x)
    if heads_first:
        prune_structured_(model, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input=x)
    prune_structured_(model, CHANNELS, example_input=x)
    emb, layer = model.bert.embeddings, model.bert.encoder.layer[1]
    assert model.config.hidden_size == 16 and model.config.hidden_size_built == 32
    assert emb.word_embeddings.weight.shape == (50, 16) and emb.position_embeddings.embedding_dim == 16
    assert emb.LayerNorm.normalized_shape == (16,) and layer.output.LayerNorm.normalized_shape == (16,)
    heads = 2 if heads_first else 4
    assert layer.attention.self.query.weight.shape == (heads * 8, 16)  # head_dim stays 8; only input columns go
    assert layer.attention.output.dense.weight.shape == (16, heads * 8) and layer.output.dense.out_features == 16
    assert model.bert.pooler.dense.in_features == 16 and model.classifier.in_features == 32
    with torch.no_grad():
        out = model(**x).logits
    assert out.shape == (2, 3) and count_macs(model, x) < 0.45 * macs0
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(transformers.BertForSequenceClassification, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, out)


def test_vit_hidden_width_cuts_tokens_positions_and_classifier_and_stock_reload_works(tmp_path):
    model, x = vit(), torch.randn(2, 3, 16, 16)
    macs0 = count_macs(model, x)
    r = prune_structured_(model, CHANNELS, example_input=x)
    emb = model.vit.embeddings
    assert emb.cls_token.shape == (1, 1, 16) and emb.position_embeddings.shape == (1, 17, 16)
    assert emb.patch_embeddings.projection.out_channels == 16 and model.classifier.in_features == 16
    assert model.vit.layers[0].attention.q_proj.weight.shape == (32, 16) and model.vit.layernorm.normalized_shape == (16,)
    assert (model.config.hidden_size, model.config.head_dim) == (16, 8)
    step = r.meta["structure_step"]
    assert step["params"]["vit.embeddings.cls_token"] == step["modules"]["classifier"]["in"]
    assert {s.name for s in r.skipped}.isdisjoint({"vit.embeddings.patch_embeddings.projection", "vit.layers.0.mlp.fc2"})
    with torch.no_grad():
        out = model(pixel_values=x).logits
    assert out.shape == (2, 5) and count_macs(model, x) < 0.5 * macs0
    model.save_pretrained(tmp_path)
    loaded = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()  # a stock config again
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, out)


def test_bert_model_keeps_its_hidden_width_the_hidden_state_is_its_output():
    model, x = bert(transformers.BertModel), ids()
    group = next(g for g in dependency_groups(model, x).groups if any(m.role == "emb" for m in g.members))
    assert group.frozen == "the hidden state reaches the model output"
    prune_structured_(model, CHANNELS, example_input=x)
    with torch.no_grad():
        assert model(**x).last_hidden_state.shape == (2, 6, 32)
    assert model.config.hidden_size == 32 and model.encoder.layer[0].intermediate.dense.out_features == 32


def test_by_default_the_hidden_width_stays_it_is_fed_by_the_first_layer():
    model, x = bert(), ids()
    r = prune_structured_(model, {"sparsity": 0.5, "round_to": 1}, example_input=x)
    assert any(s.name == "bert.embeddings.word_embeddings" and "keep_first_last" in s.reason for s in r.skipped)
    assert model.config.hidden_size == 32 and model.bert.encoder.layer[0].intermediate.dense.out_features == 32


def swin():
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                                  num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return transformers.SwinForImageClassification(cfg).eval()


def test_a_stream_whose_width_changes_between_stages_is_not_one_group():
    """Swin's stages are 16 and 32 wide (patch merging between them): the hidden-width rule must not join their
    layers into one group of config.hidden_size (it did, and scoring indexed past the first stage's width)."""
    model, x = swin(), torch.randn(2, 3, 32, 32)
    spaces = dependency_groups(model, x)
    for group in spaces.groups:
        names = {m.module for m in group.members}
        assert not (any(".layers.0." in n for n in names) and any(".layers.1." in n for n in names)), sorted(names)
    macs0 = count_macs(model, x)
    prune_structured_(model, CHANNELS, example_input=x)
    assert model.swin.encoder.layers[0].blocks[0].mlp.fc1.out_features == 32  # the FFN: 64 -> 32
    assert model(x).logits.shape == (2, 10) and count_macs(model, x) < macs0


def test_swin_heads_take_their_relative_position_bias_columns_with_them():
    model, x = swin(), torch.randn(2, 3, 32, 32)
    attn = model.swin.encoder.layers[1].blocks[0].attention
    table = attn.relative_position_bias.relative_position_bias_table.detach().clone()  # (49, 4)
    prune_structured_(model, {"granularity": "head", "sparsity": 0.5, "keep_first_last": False}, example_input=x)
    kept = [h for h in range(4) if h not in attn.pruned_heads]
    assert len(kept) == 2 and attn.q_proj.out_features == 2 * attn.head_dim
    assert torch.equal(attn.relative_position_bias.relative_position_bias_table, table[:, kept])
    assert model(x).logits.shape == (2, 10)
