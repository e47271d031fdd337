"""Structured pruning of Hugging Face transformers: heads and feed-forward channels, config kept stock, exact numerics."""

import copy

import pytest
import torch

from torchslim.errors import TransformRefusedError
from torchslim.graph.attention import attention_specs, head_rows
from torchslim.measure import count_macs
from torchslim.prune.hf import from_pretrained
from torchslim.prune.structured import prune_structured_

T = pytest.importorskip("transformers")


def bert_config(**kw):
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return T.BertConfig(**{**base, **kw})


def make_bert(cls=None, **kw):
    torch.manual_seed(0)
    return (cls or T.BertModel)(bert_config(**kw)).eval()


def make_gpt2():
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)).eval()


def make_llama(kv=2):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv,
                        intermediate_size=64, max_position_embeddings=32)
    return T.LlamaForCausalLM(cfg).eval()


def make_vit():
    torch.manual_seed(0)
    return T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
                                  patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def text_batch():
    """Two sequences, the second one padded: a tokenizer's dict batch."""
    ids = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def out_of(model, x):
    out = model(**x)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def zero_pruned_heads(ref, step):
    """The unpruned reference with the removed heads' columns of each output projection zeroed: it must compute
    exactly what the pruned model computes."""
    specs = {s.name: s for s in attention_specs(ref)}
    with torch.no_grad():
        for name, kept in step["heads"].items():
            spec = specs[name]
            gone = head_rows([h for h in range(spec.heads) if h not in kept], spec.head_dim)
            o = ref.get_submodule(f"{name}.{spec.projections['o'].path}")
            if spec.projections["o"].transposed:
                o.weight[gone, :] = 0.0
            else:
                o.weight[:, gone] = 0.0


def zero_pruned_channels(ref, step):
    """The reference with every removed output row (and bias) of the feed-forward producers zeroed."""
    with torch.no_grad():
        for name, dims in step["modules"].items():
            if "out" not in dims:
                continue
            mod = ref.get_submodule(name)
            w = mod.weight
            n = w.shape[1] if type(mod).__name__ == "Conv1D" else w.shape[0]
            gone = [i for i in range(n) if i not in set(dims["out"])]
            if type(mod).__name__ == "Conv1D":
                w[:, gone] = 0.0
            else:
                w[gone] = 0.0
            if mod.bias is not None:
                mod.bias[gone] = 0.0


CASES = {
    "bert": (make_bert, text_batch),
    "bert_cls": (lambda: make_bert(T.BertForSequenceClassification, num_labels=3), text_batch),
    "gpt2": (make_gpt2, text_batch),
    "llama_gqa": (make_llama, text_batch),
    "vit": (make_vit, lambda: {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}),
}


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("uniform", [True, False])
def test_heads_are_removed_exactly_and_macs_drop(key, uniform):
    make, batch = CASES[key]
    model, x = make(), batch()
    ref = copy.deepcopy(model)
    macs0 = count_macs(model, x)
    cfg = {"granularity": "head", "sparsity": 0.5, "uniform": uniform, "scope": "layer" if uniform else "global"}
    report = prune_structured_(model, cfg, example_input=x)
    step = report.meta["structure_step"]
    assert step["heads"] and all(len(kept) < attention_specs(ref)[0].heads for kept in step["heads"].values())
    assert [l.action for l in report.layers] == ["pruned"] * len(step["heads"])
    zero_pruned_heads(ref, step)
    with torch.no_grad():
        assert torch.allclose(out_of(model, x), out_of(ref, x), atol=1e-5)
    assert count_macs(model, x) < macs0


def test_bert_heads_uniform_write_pruned_heads_and_the_saved_classifier_reloads_identically(tmp_path):
    model, x = make_bert(T.BertForSequenceClassification, num_labels=3), text_batch()
    prune_structured_(model, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input=x)
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "uniform": True}, example_input=x)
    cfg = model.config
    assert cfg.num_attention_heads == 4 and sorted(cfg.pruned_heads) == [0, 1]  # transformers 4's meaning: heads removed
    assert all(len(h) == 2 for h in cfg.pruned_heads.values()) and cfg.intermediate_size == 32
    sa = model.bert.encoder.layer[0].attention.self
    assert (sa.num_attention_heads, sa.all_head_size, sa.attention_head_size) == (2, 16, 8)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(T.BertForSequenceClassification, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)


def test_llama_uniform_heads_keep_a_stock_config_that_from_pretrained_loads(tmp_path):
    model, x = make_llama(kv=2), text_batch()
    ref = copy.deepcopy(model)
    r = prune_structured_(model, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input=x)
    # grouped-query attention: whole key/value groups go, with their query heads
    for kept in r.meta["structure_step"]["heads"].values():
        assert kept in ([0, 1], [2, 3])
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups, attn.head_dim) == (16, 8, 2, 8)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 8)
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "uniform": True}, example_input=x)
    assert cfg.intermediate_size == 32
    model.save_pretrained(tmp_path)
    loaded = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()  # the stock loader: a stock config
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    assert count_macs(model, x) < count_macs(ref, x)


def test_multi_query_attention_prunes_query_heads_and_keeps_the_shared_key_value_head():
    model, x = make_llama(kv=1), text_batch()
    ref = copy.deepcopy(model)
    r = prune_structured_(model, {"granularity": "head", "sparsity": 0.5}, example_input=x)
    assert all(len(kept) == 2 for kept in r.meta["structure_step"]["heads"].values())
    attn = model.model.layers[0].self_attn
    assert (attn.k_proj.out_features, attn.num_key_value_groups) == (8, 2)
    zero_pruned_heads(ref, r.meta["structure_step"])
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, ref(**x).logits, atol=1e-5)


@pytest.mark.parametrize("key", list(CASES))
def test_feed_forward_channels_are_removed_exactly(key):
    make, batch = CASES[key]
    model, x = make(), batch()
    ref = copy.deepcopy(model)
    macs0 = count_macs(model, x)
    report = prune_structured_(model, {"sparsity": 0.5, "uniform": True}, example_input=x)
    step = report.meta["structure_step"]
    assert step["modules"] and report.layers
    # every other layer is reported with why it stays
    assert any("torch.fx cannot trace" in s.reason for s in report.skipped)
    assert any("granularity 'head'" in s.reason for s in report.skipped)
    zero_pruned_channels(ref, step)
    with torch.no_grad():
        assert torch.allclose(out_of(model, x), out_of(ref, x), atol=1e-5)
    assert count_macs(model, x) < macs0
    key_name = "n_inner" if key == "gpt2" else "intermediate_size"
    assert getattr(model.config, key_name) == (64 if key == "gpt2" else 32)  # half of 4 x 32 / half of 64


def test_global_channel_pruning_leaves_the_config_alone_when_the_blocks_differ():
    model, x = make_bert(), text_batch()
    r = prune_structured_(model, {"sparsity": 0.4, "scope": "global", "round_to": 1}, example_input=x)
    widths = {dims["out"].__len__() for dims in r.meta["structure_step"]["modules"].values() if "out" in dims}
    assert model.config.intermediate_size == (widths.pop() if len(widths) == 1 else 64)
    with torch.no_grad():
        model(**text_batch())


def test_calibration_dict_batches_give_the_example_input():
    model = make_bert(T.BertForSequenceClassification, num_labels=3)
    batches = [{**text_batch(), "labels": torch.tensor([0, 1])}]
    r = prune_structured_(model, {"granularity": "head", "sparsity": 0.25}, calibration=batches)
    assert r.meta["structure_step"]["heads"]


def test_a_layer_outside_the_known_blocks_refuses_naming_it_and_the_model_stays_bit_identical():
    model, x = make_bert(T.BertForSequenceClassification, num_labels=3), text_batch()
    before, cfg_before = state(model), model.config.to_dict()
    with pytest.raises(TransformRefusedError, match=r"layer bert.pooler.dense cannot be pruned structurally: .*torch.fx cannot trace"):
        prune_structured_(model, {"sparsity": 0.5, "targets": {"bert.pooler.dense": {}}}, example_input=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config.to_dict() == cfg_before


def test_uniform_refuses_blocks_of_different_head_counts_and_leaves_the_model_as_it_was():
    model, x = make_bert(), text_batch()
    prune_structured_(model, {"granularity": "head", "sparsity": 0.25, "targets": {"encoder.layer.0.attention": {}}}, example_input=x)
    assert model.config.pruned_heads.keys() == {0}
    before, cfg_before = state(model), model.config.to_dict()
    with pytest.raises(TransformRefusedError, match=r"uniform: the chosen attention modules have different numbers of prunable units"):
        prune_structured_(model, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config.to_dict() == cfg_before
    with torch.no_grad():
        model(**x)


@pytest.mark.parametrize(("name", "cls"), [("resnet_hf", "ResNetForImageClassification"),
                                           ("convnext_hf", "ConvNextForImageClassification")])
def test_a_cnn_pruned_to_widths_no_config_says_reloads_identically(tmp_path, name, cls):
    """Channel pruning leaves a Hugging Face CNN with layers of widths its config cannot say (hidden_sizes is per
    stage; here each bottleneck and block keeps its own): from_pretrained built the stock widths and refused the
    weights. Now each layer is narrowed to its saved weight's shape (grouped and depthwise convolutions, BatchNorm,
    ConvNeXt's layer scale) before loading."""
    from torchslim.testing.architectures import ARCHITECTURES

    arch = ARCHITECTURES[name]()
    model, x = arch.model, arch.example
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "keep_first_last": False}, example_input=x)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(getattr(T, cls), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_from_pretrained_still_reads_a_directory_with_only_pytorch_model_bin(tmp_path):
    """The shapes check reads safetensors headers; a directory of an older format goes to transformers as before."""
    cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = T.BertModel(cfg).eval()
    cfg.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = from_pretrained(T.BertModel, tmp_path)
    ids = torch.tensor([[1, 5, 7, 2]])
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


def test_gpt2_with_one_feed_forward_narrowed_reloads_identically(tmp_path):
    """GPT-2's Conv1D keeps its widths in nf/nx: narrowing its weight alone broke the reloaded forward."""
    from torchslim.testing.architectures import ARCHITECTURES

    arch = ARCHITECTURES["gpt2"]()
    model, x = arch.model, arch.example
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "keep_first_last": False,
                              "targets": {"transformer.h.0.mlp.c_fc": {}}}, example_input=x)
    assert model.transformer.h[0].mlp.c_fc.nf != model.transformer.h[1].mlp.c_fc.nf  # no config field says both
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(T.GPT2LMHeadModel, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
