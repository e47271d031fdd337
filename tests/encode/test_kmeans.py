"""Weight sharing: 1-D k-means, the share_weights_ verb, centroid fine-tuning, checkpoints."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.encode.kmeans import (
    codebook_of,
    get_codes,
    init_centroids,
    iter_shared,
    kmeans_1d,
    share_weights_,
    sum_cluster_gradients_,
)
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.prune.mask import get_mask
from torchslim.train import finetune, load_checkpoint, save_checkpoint


def _sse(values, centroids, labels):
    return float(((values - centroids[labels].astype(np.float64)) ** 2).sum())


def test_kmeans_is_exact_when_there_are_few_distinct_values():
    values = np.array([0.5, -1.0, 0.5, 2.0, -1.0])
    c, labels = kmeans_1d(values, 4)
    assert c.tolist() == [-1.0, 0.5, 2.0]
    assert np.array_equal(c[labels], values.astype(np.float32))


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_improves_on_its_initialisation_and_is_deterministic(init):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.1, 0.02, 3000), rng.normal(0.1, 0.03, 3000), rng.normal(0, 0.3, 50)])
    c0 = np.sort(init_centroids(values, 16, init, np.random.default_rng(0)))
    labels0 = np.searchsorted((c0[1:] + c0[:-1]) / 2, values)
    c, labels = kmeans_1d(values, 16, init=init, seed=0)
    assert np.all(np.diff(c) > 0) and labels.min() == 0 and labels.max() == c.size - 1
    assert _sse(values, c, labels) < 0.9 * _sse(values, c0.astype(np.float32), labels0)
    c2, labels2 = kmeans_1d(values, 16, init=init, seed=0)
    assert np.array_equal(c, c2) and np.array_equal(labels, labels2)


def test_empty_clusters_are_relocated_on_pruned_weights():
    """Linear init puts most centroids in the gap pruning leaves around zero; relocation uses them all."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, 20000)
    live = w[np.abs(w) > 0.1]  # what survives magnitude pruning: two tails
    plain, plain_labels = kmeans_1d(live, 32, relocate_empty=False)
    used, used_labels = kmeans_1d(live, 32)
    assert used.size == 32 and plain.size < 32
    assert _sse(live, used, used_labels) < _sse(live, plain, plain_labels)


def _pruned_lenet300(sparsity=0.9):
    torch.manual_seed(0)
    model = ts.create_model("lenet300")
    ts.prune_(model, {"sparsity": sparsity, "keep_first_last": False})
    return model


def test_share_weights_uses_at_most_2_to_the_bits_values_and_keeps_pruned_zeros():
    model = _pruned_lenet300()
    zeros_before = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = share_weights_(model, {"bits": 4, "targets": {"fc3": {"bits": 2}, "re:fc[12]": {}}})
    assert {r.name: r.details["clusters"] for r in report.layers} == {"fc1": 16, "fc2": 16, "fc3": 4}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight.detach()
        assert torch.equal(w == 0, zeros_before[name])
        codes = get_codes(module)
        assert torch.equal(codes >= 0, get_mask(module, "weight"))
        assert (
            torch.unique(w[codes >= 0]).numel() == report.layers[["fc1", "fc2", "fc3"].index(name)].details["clusters"]
        )
        assert torch.equal(codebook_of(module)[codes[codes >= 0].long()], w[codes >= 0])


def test_a_refused_share_leaves_the_model_bit_identical():
    model = _pruned_lenet300()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TransformRefusedError, match="min_weights"):
        share_weights_(model, {"min_weights": 10**7})
    with pytest.raises(ConfigError, match="fc9"):
        share_weights_(model, {"targets": {"fc9": {}}})
    with pytest.raises(ConfigError, match="bits"):
        share_weights_(model, {"bits": 0})
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(iter_shared(model))


def test_each_cluster_receives_the_sum_of_its_members_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(20, 8)
    share_weights_(nn.Sequential(layer), {"bits": 2})
    codes = get_codes(layer).long()
    x = torch.randn(5, 20)
    layer(x).pow(2).sum().backward()
    raw = layer.weight.grad.clone()
    sum_cluster_gradients_(nn.Sequential(layer))
    for k in range(4):
        members = codes == k
        assert torch.allclose(layer.weight.grad[members], raw[members].sum().expand(int(members.sum())), rtol=1e-5)


def test_fine_tuning_moves_centroids_but_keeps_sharing_and_pruning_exact():
    data = ts.load_data("digits")
    torch.manual_seed(0)
    model = ts.create_model("mlp", in_features=64, hidden=(64,), num_classes=10)
    finetune(model, data, {"epochs": 8, "lr": 0.1, "batch_size": 64}, progress=False)
    dense_acc = evaluate_accuracy(model, data.loader("test", 512))
    ts.prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    share_weights_(model, {"bits": 3})
    shared = [(m, get_codes(m).clone(), codebook_of(m)) for _, m, _, _ in iter_shared(model)]
    finetune(model, data, {"epochs": 3, "lr": 0.01, "batch_size": 64, "weight_decay": 1e-4}, progress=False)
    acc = evaluate_accuracy(model, data.loader("test", 512))
    assert acc >= dense_acc - 0.03, (dense_acc, acc)
    moved = 0
    for module, codes, codebook in shared:
        w = module.weight.detach()
        assert torch.equal(get_codes(module), codes)
        assert torch.equal(w[codes < 0], torch.zeros(int((codes < 0).sum())))
        new_book = codebook_of(module)
        assert torch.equal(new_book[codes[codes >= 0].long()], w[codes >= 0])  # every member on its centroid
        moved += int((new_book != codebook).sum())
    assert moved > 0


def test_sharing_survives_a_checkpoint_and_keeps_working(tmp_path):
    model = _pruned_lenet300()
    share_weights_(model, {"bits": 5})
    save_checkpoint(model, tmp_path / "ckpt")
    fresh = ts.create_model("lenet300")
    load_checkpoint(fresh, tmp_path / "ckpt")
    x = torch.randn(4, 784)
    assert torch.equal(model(x), fresh(x))
    for (_, a, _, ca), (_, b, _, cb) in zip(iter_shared(model), iter_shared(fresh)):
        assert torch.equal(ca, cb) and torch.equal(a.weight, b.weight)


def test_inconsistent_codes_in_a_checkpoint_are_refused(tmp_path):
    from safetensors.torch import save_file

    model = ts.create_model("lenet300")
    state = dict(model.state_dict())
    codes = torch.zeros(300, 784, dtype=torch.int16)
    codes[0, 0] = 5  # ids 1..4 unused
    state["fc1.weight_codes"] = codes
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ts.CheckpointError, match="not contiguous"):
        ts.load_weights(ts.create_model("lenet300"), tmp_path / "w.safetensors")


def test_share_is_a_technique_object_run_by_the_verb():
    import inspect

    from torchslim.encode import SHARE
    from torchslim.technique import Technique, run

    assert isinstance(SHARE, Technique) and SHARE.name == "share"
    params = inspect.signature(share_weights_).parameters
    assert list(params) == ["model", "config", "filter_fn", "calibration", "example_input", "deprecated"]
    a, b = _pruned_lenet300(), _pruned_lenet300()
    ra, rb = share_weights_(a, {"bits": 3}), run(SHARE, b, {"bits": 3})
    assert ra.layers == rb.layers and ra.skipped == rb.skipped and ra.meta == rb.meta
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert (ra.title, ra.technique) == ("weight sharing", "share")


def test_calibration_is_accepted_and_unused_and_loader_is_deprecated():
    a, b = _pruned_lenet300(), _pruned_lenet300()
    share_weights_(a, {"bits": 3}, calibration=[torch.randn(2, 784)], example_input=torch.randn(1, 784))
    with pytest.warns(DeprecationWarning, match=r"share_weights_\(\.\.\., calibration=\.\.\.\)"):
        share_weights_(b, {"bits": 3}, loader=[torch.randn(2, 784)])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(TypeError, match="unexpected keyword argument 'bits'"):
        share_weights_(b, bits=3)


def test_live_weights_come_from_the_mask_constraint_without_importing_prune():
    import ast
    import pathlib

    import torchslim.encode.kmeans as kmeans

    tree = ast.parse(pathlib.Path(kmeans.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("torchslim.prune")]
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 3.0], [0.0, 4.0, 5.0, 6.0]]))
    assert kmeans.live_weights(layer).sum() == 6  # no mask: the non-zeros
    ts.prune_(nn.Sequential(layer), {"sparsity": 0.5, "keep_first_last": False})
    assert torch.equal(kmeans.live_weights(layer), layer.weight_mask)


def test_a_failure_while_applying_leaves_the_model_bit_identical(monkeypatch):
    import torchslim.encode.kmeans as kmeans

    model = _pruned_lenet300()
    before = copy.deepcopy(model.state_dict())
    calls = []

    def failing(module, name, codes):
        calls.append(module)
        if len(calls) == 2:  # the first layer is already shared
            raise RuntimeError("injected")
        return attach(module, name, codes)

    attach = kmeans.attach_codes
    monkeypatch.setattr(kmeans, "attach_codes", failing)
    with pytest.raises(RuntimeError, match="injected"):
        share_weights_(model, {"bits": 3})
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(iter_shared(model))


def test_a_model_without_linear_or_conv_layers_is_refused():
    with pytest.raises(TransformRefusedError, match=r"no layer to share \(no parameter of two or more dimensions\)"):
        share_weights_(nn.Sequential(nn.ReLU()))


class _TextRNN(nn.Module):
    """Embedding -> GRU or LSTM -> Linear: the model the review shared 256 of 113,408 weights of."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.embed = nn.Embedding(500, 64)
        self.rnn = cell(64, 96, batch_first=True)
        self.head = nn.Linear(96, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_embedding_and_recurrent_weights_are_shared_and_the_tslim_is_small(cell, tmp_path):
    torch.manual_seed(0)
    model = _TextRNN(cell)
    ids = torch.randint(0, 500, (4, 12))
    report = share_weights_(model, {"bits": 4})
    names = [layer.name for layer in report.layers]
    assert names == ["embed", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"]
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("rnn", f"{cell.__name__}: bias_ih_l0, bias_hh_l0 are not shared (share_weights_ clusters parameters of two or "
                "more dimensions)")
    ]
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2]
    covered = sum(layer.params for layer in report.layers)
    assert covered == sum(p.numel() for p in matrices)  # every weight matrix, not 256 weights of them
    assert all(len(p.detach().unique()) <= 16 for p in matrices)
    path = ts.save(model, tmp_path / "rnn.tslim")
    assert path.stat().st_size < 0.25 * sum(p.numel() * 4 for p in model.parameters())  # ~4 bits per weight
    restored = ts.load(path, lambda: _TextRNN(cell))
    assert torch.equal(restored.eval()(ids), model.eval()(ids))


def test_attention_input_projections_are_shared_and_the_model_still_runs():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(2, 5, 32)
    report = share_weights_(nn.Sequential(mha), {"bits": 5})
    assert [layer.name for layer in report.layers] == ["0.in_proj_weight", "0.out_proj"]
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("0", "MultiheadAttention: in_proj_bias is not shared (share_weights_ clusters parameters of two or more dimensions)")
    ]
    assert len(mha.in_proj_weight.detach().unique()) <= 32
    out, _ = mha(x, x, x)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()


def test_one_dimensional_leftovers_and_the_model_itself_get_their_own_reasons():
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.LayerNorm(4))
    model.scale = nn.Parameter(torch.ones(4))
    report = share_weights_(model, {"bits": 2})
    assert {s.name: s.reason for s in report.skipped} == {
        "": "Sequential (the model itself) holds scale directly: share_weights_ transforms layers, not parameters held "
            "by the model",
        "1": "PReLU: weight is not shared (share_weights_ clusters parameters of two or more dimensions)",
        "2": "LayerNorm: normalisation parameters (weight, bias) are not shared",
    }
