import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import PruneConfig, iter_masks, nm_mask, prune_, satisfies_nm
from torchslim.train import finetune
from torchslim.zoo import create_model


def test_nm_mask_keeps_the_n_best_of_every_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 5.0, 6.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[True, False, True, False, False, False, True, True]]
    assert nm_mask(scores, 1, 4).tolist() == [[True, False, False, False, False, False, False, True]]
    # ties broken by position; convolutions grouped along (in, kh, kw) flattened
    conv_scores = torch.arange(2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2)
    keep = nm_mask(conv_scores, 2, 4)
    assert keep.shape == conv_scores.shape and keep.view(2, -1, 4).sum(-1).eq(2).all()
    assert keep.view(2, 8)[0].tolist() == [False, False, True, True, False, False, True, True]


@pytest.mark.parametrize(
    "n,m,criterion,pruned",
    [(2, 4, "magnitude", ["fc1", "fc2", "fc3"]), (4, 8, "taylor", ["fc1"]), (1, 4, "activation_mean", ["fc1", "fc2", "fc3"])],
)
def test_nm_pattern_holds_after_finetuning(n, m, criterion, pruned, digits, trained_lenet):
    model = trained_lenet()
    report = prune_(model, {"granularity": "nm", "n": n, "m": m, "criterion": criterion, "keep_first_last": False}, calibration=digits.loader("train", 128))
    assert [l.name for l in report.layers] == pruned
    assert all("input length" in s.reason for s in report.skipped)  # 300 and 100 inputs: not multiples of 8
    assert all(l.details["pattern"] == f"{n}:{m}" and abs(l.sparsity - (1 - n / m)) < 1e-9 for l in report.layers)
    acc_pruned = evaluate_accuracy(model, digits.loader("test", 512))
    finetune(model, digits, {"epochs": 2, "lr": 0.02, "batch_size": 32, "weight_decay": 1e-4}, progress=False)
    for mod in (getattr(model, name) for name in pruned):
        assert satisfies_nm(mod.weight, n, m)
        assert not bool(mod.weight[~mod.weight_mask].any())
    acc = evaluate_accuracy(model, digits.loader("test", 512))
    assert acc >= acc_pruned - 0.01 and acc > 0.9, (acc_pruned, acc)


def test_nm_on_convolutions_skips_layers_that_do_not_split():
    torch.manual_seed(0)
    model = create_model("lenet5")  # conv1: 1*5*5 = 25 inputs per filter, not a multiple of 4
    r = prune_(model, {"granularity": "nm", "n": 2, "m": 4, "keep_first_last": False})
    assert [l.name for l in r.layers] == ["conv2", "fc1", "fc2"]
    assert "not a multiple of m=4" in r.skipped[0].reason and r.skipped[0].name == "conv1"
    assert satisfies_nm(model.conv2.weight, 2, 4) and not hasattr(model.conv1, "weight_mask")


@pytest.mark.parametrize(
    "cfg,path,text",
    [
        ({"granularity": "nm", "n": 5, "m": 4}, "m", "n < m"),
        ({"granularity": "nm", "n": 4, "m": 4}, "m", "n < m"),
        ({"granularity": "nm", "n": 0, "m": 4}, "n", "greater than or equal to 1"),
        ({"granularity": "nm", "n": 2, "m": 4, "sparsity": 0.9}, "sparsity", "fixes the sparsity at 0.5"),
        ({"granularity": "block"}, "granularity", "'element' or 'nm'"),
        ({}, "sparsity", "required for granularity 'element'"),
    ],
)
def test_bad_nm_configs_name_the_field(cfg, path, text):
    with pytest.raises(ConfigError) as exc:
        PruneConfig.parse(cfg)
    assert exc.value.issues[0].path == path and text in str(exc.value), str(exc.value)


def test_nm_refusal_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransformRefusedError, match="no layer left.*not a multiple of m=4"):
        prune_(model, {"granularity": "nm", "n": 2, "m": 4, "keep_first_last": False, "targets": {"0": {}}})
    with pytest.raises(TransformRefusedError, match="granularity 'nm' does not use"):
        prune_(model, {"granularity": "nm", "n": 2, "m": 4, "keep_first_last": False, "targets": {"1": {"sparsity": 0.3}}})
    assert not list(iter_masks(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _conv1d_layers(model):
    from torchslim.graph.surgery import is_conv1d

    return {n: m for n, m in model.named_modules() if is_conv1d(m)}


def test_nm_on_gpt2_conv1d_groups_run_along_the_input_dimension_dim_0():
    model = _tiny_gpt2()
    conv1d = _conv1d_layers(model)
    assert len(conv1d) == 8  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per block
    weights = {n: m.weight.detach().clone() for n, m in conv1d.items()}
    report = prune_(model, {"granularity": "nm", "n": 2, "m": 4, "keep_first_last": False})
    pruned = {layer.name for layer in report.layers}
    assert set(conv1d) <= pruned
    for name, module in conv1d.items():
        w = module.weight.detach()  # (in, out): every output column, cut into groups of 4 consecutive inputs
        nin, nout = w.shape
        groups = (w != 0).t().reshape(nout, nin // 4, 4)
        assert bool((groups.sum(-1) == 2).all()), name
        kept = weights[name].abs().t().reshape(nout, nin // 4, 4).topk(2, dim=-1).indices  # magnitude: the 2 largest
        assert torch.equal(groups.gather(-1, kept), torch.ones_like(kept, dtype=torch.bool)), name
        assert satisfies_nm(w, 2, 4, transposed=True) and report.layers[0].details["pattern"] == "2:4"
    ids = torch.randint(0, 50, (2, 8))
    assert torch.isfinite(model(ids).logits).all()


def test_nm_mask_transposed_is_the_mask_of_the_transpose():
    scores = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nm_mask(scores, 2, 4, transposed=True), nm_mask(scores.t(), 2, 4).t())
    with pytest.raises(TransformRefusedError, match="not a multiple of m=4"):
        nm_mask(torch.randn(6, 8), 2, 4, transposed=True)
