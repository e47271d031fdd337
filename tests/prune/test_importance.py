import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError, UnknownNameError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import CRITERIA, PruneConfig, compute_scores, iter_masks, prune_
from torchslim.prune.importance import estimate_hessian_diagonal

DATA_CRITERIA = ["gradient", "taylor", "hessian_fisher", "hessian_hutchinson", "activation_mean", "activation_max", "activation_std"]


def test_registry_lists_every_criterion():
    assert set(CRITERIA.names()) == {"magnitude", "l2", "random", *DATA_CRITERIA}
    for name in DATA_CRITERIA:
        assert CRITERIA.get(name).needs_data
    with pytest.raises(UnknownNameError, match="registered: activation_max"):
        CRITERIA.get("obs")


@pytest.mark.parametrize("criterion", sorted(set(CRITERIA.names()) - {"random"}))
def test_every_criterion_beats_random_on_a_trained_model(criterion, digits, trained_lenet):
    acc = {}
    for crit in (criterion, "random"):
        m = trained_lenet()
        prune_(m, {"sparsity": 0.9, "criterion": crit, "keep_first_last": False}, calibration=digits.loader("train", 128, shuffle=True))
        assert sum(int((mod.weight == 0).sum()) for mod in m.modules() if isinstance(mod, nn.Linear)) == round(0.9 * (64 * 300 + 300 * 100 + 100 * 10))
        acc[crit] = evaluate_accuracy(m, digits.loader("test", 512))
    assert acc[criterion] > acc["random"] + 0.15, acc


def _softmax_linear_data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 4, generator=g)
    b = torch.randn(3, generator=g) * 0.5
    x = torch.randn(n, 4, generator=g)
    y = torch.multinomial(torch.softmax(x @ w.T + b, 1), 1, generator=g).squeeze(1)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(b)
    return model, x, y


def _exact_hessian_diag(model, module, x, y):
    w0 = module.weight.detach().clone()

    def loss(flat):
        out = torch.func.functional_call(model, {"weight" if module is model else "": flat.view_as(w0)}, (x,)) if module is model else None
        return nn.functional.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, w0.flatten()).diagonal().view_as(w0)


def test_fisher_matches_the_exact_hessian_diagonal_and_per_sample_definition():
    # labels drawn from the model itself: E[empirical Fisher] = Hessian exactly (softmax-linear)
    model, x, y = _softmax_linear_data()
    exact = _exact_hessian_diag(model, model, x, y)
    loader = [(x[i : i + 500], y[i : i + 500]) for i in range(0, 4000, 500)]
    fisher = estimate_hessian_diagonal(model, [("", model)], "fisher", loader=loader, batches=8)[""]
    rel = ((fisher - exact).abs() / exact.abs()).max()
    assert rel < 0.15, (fisher, exact)
    # definition: mean over samples of the squared per-sample gradient
    manual = torch.zeros_like(model.weight)
    for i in range(200):
        g = torch.autograd.grad(nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), model.weight)[0]
        manual += g.square() / 200
    est = estimate_hessian_diagonal(model, [("", model)], "fisher", loader=[(x[:100], y[:100]), (x[100:200], y[100:200])], batches=2)[""]
    assert torch.allclose(est, manual, rtol=1e-4, atol=1e-7)
    # and the OBD saliency is ½·h·w²
    scores = compute_scores(model, [("", model)], "hessian_fisher", loader=loader, batches=8)[""]
    assert torch.allclose(scores, 0.5 * fisher * model.weight.detach().square(), rtol=1e-5)


def test_hutchinson_matches_the_exact_hessian_diagonal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    params = dict(model.named_parameters())
    exact = {}
    for key, layer in (("0", model[0]), ("2", model[2])):
        w0 = layer.weight.detach().clone()

        def loss(flat, key=key, w0=w0):
            p = dict(params)
            p[f"{key}.weight"] = flat.view_as(w0)
            return nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

        exact[key] = torch.autograd.functional.hessian(loss, w0.flatten()).diagonal().view_as(w0)
    est = estimate_hessian_diagonal(model, [("0", model[0]), ("2", model[2])], "hutchinson", loader=[(x, y)] * 8, batches=8, probes=250)
    for key in exact:
        err = (est[key] - exact[key]).norm() / exact[key].norm()
        assert err < 0.12, (key, err, est[key], exact[key])


def test_activation_scores_are_weight_times_input_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(32, 5) * torch.tensor([0.1, 1.0, 2.0, 0.0, 3.0])
    loader = [(x[:16], torch.zeros(16, dtype=torch.long)), (x[16:], torch.zeros(16, dtype=torch.long))]
    layers = [("0", model[0]), ("2", model[2])]
    h = torch.relu(model[0](x)).detach()
    for crit, stat in (
        ("activation_mean", lambda t: t.abs().mean(0)),
        ("activation_max", lambda t: t.abs().amax(0)),
        ("activation_std", lambda t: t.std(0, unbiased=False)),
    ):
        s = compute_scores(model, layers, crit, loader=loader, batches=2)
        assert torch.allclose(s["0"], model[0].weight.detach().abs() * stat(x), atol=1e-5)
        assert torch.allclose(s["2"], model[2].weight.detach().abs() * stat(h), atol=1e-5)
    # an always-zero input feature makes its weights the least important
    assert bool((s["0"][:, 3] == 0).all())


def test_activation_scores_of_grouped_convolutions():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    x = torch.randn(8, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    s = compute_scores(conv, [("c", conv)], "activation_mean", loader=[(x, torch.zeros(8, dtype=torch.long))], batches=1)["c"]
    stat = x.abs().mean((0, 2, 3))
    expect = conv.weight.detach().abs().clone()
    for o in range(6):
        g = o // 3
        expect[o] *= stat[2 * g : 2 * g + 2].view(2, 1, 1)
    assert torch.allclose(s, expect, rtol=1e-5)


@pytest.mark.parametrize("criterion", sorted(CRITERIA.names()))
def test_scoring_leaves_the_model_bit_identical(criterion, digits):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    model.train()
    model[1].weight.requires_grad_(False)
    model[5].weight.grad = torch.full_like(model[5].weight, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    scores = compute_scores(model, [("1", model[1]), ("5", model[5])], criterion, loader=digits.loader("train", 64), batches=2)
    assert scores["1"].shape == (32, 64) and scores["1"].dtype == torch.float32 and scores["1"].device.type == "cpu"
    assert torch.isfinite(scores["5"]).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert not model[1].weight.requires_grad and model[1].weight.grad is None
    assert torch.equal(model[5].weight.grad, torch.full_like(model[5].weight, 7.0))
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_without_a_loader_refuse_naming_the_criterion(criterion, trained_lenet):
    m = trained_lenet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TransformRefusedError, match=f"criterion '{criterion}' needs calibration data"):
        prune_(m, {"sparsity": 0.5, "criterion": criterion})
    assert not list(iter_masks(m))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_unknown_criterion_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        PruneConfig.parse({"sparsity": 0.5, "criterion": "hessian"})
    assert exc.value.issues[0].path == "criterion" and "hessian_fisher" in str(exc.value)
    with pytest.raises(ConfigError, match="targets.fc2.criterion"):
        PruneConfig.parse({"sparsity": 0.5, "targets": {"fc2": {"criterion": "nope"}}})


def test_per_layer_criteria_and_report_details(digits, trained_lenet):
    m = trained_lenet()
    r = prune_(
        m,
        {"sparsity": 0.5, "scope": "layer", "keep_first_last": False, "targets": {"fc1": {"criterion": "taylor"}, "fc3": None, "re:.*": {}}},
        calibration=digits.loader("train", 128),
    )
    d = {l.name: l.details for l in r.layers}
    assert d["fc1"]["criterion"] == "taylor" and d["fc2"]["criterion"] == "magnitude"
    assert d["fc1"]["sparsity_before"] == 0.0 and abs(d["fc1"]["sparsity_after"] - 0.5) < 1e-3
    assert r.skipped[0].name == "fc3" and "null" in r.skipped[0].reason
    assert r.meta["criteria"] == ["magnitude", "taylor"]
