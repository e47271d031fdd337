import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import SparseTrainConfig, SparsityRegularizer, iter_masks, sparse_train
from torchslim.prune.regularize import penalty_value, prune_small_
from torchslim.train import finetune
from torchslim.zoo import create_model


def test_penalty_values():
    w = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    assert float(penalty_value(w, "l1")) == 8.0
    assert float(penalty_value(w, "l2")) == 26.0
    assert float(penalty_value(w, "group_lasso")) == 6.0  # 5 + 1
    conv = torch.ones(2, 3, 2, 2)
    assert float(penalty_value(conv, "group_lasso")) == pytest.approx(2 * 12 ** 0.5)


def test_regularizer_adds_weighted_penalty_per_layer():
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    reg = SparsityRegularizer(model, {"penalty": "l1", "strength": 0.01, "keep_first_last": False, "targets": {"fc2": {"weight": 3.0}, "fc3": None, "re:.*": {}}})
    loss = torch.tensor(1.0)
    out = reg.on_loss(None, loss).detach()  # type: ignore[arg-type]
    expect = 1.0 + 0.01 * (model.fc1.weight.abs().sum() + 3.0 * model.fc2.weight.abs().sum()).detach()
    assert float(out) == pytest.approx(float(expect), rel=1e-6)
    assert [s.name for s in reg.skipped] == ["fc3"]


@pytest.mark.parametrize("penalty", ["l1", "group_lasso"])
def test_penalty_drives_weights_to_zero_compared_with_plain_training(penalty, digits, trained_lenet):
    strength = 2e-4 if penalty == "l1" else 1e-2
    cfg = {"epochs": 3, "lr": 0.05, "batch_size": 32}

    def small(model):
        w = model.fc2.weight.detach()
        if penalty == "group_lasso":
            return float((w.norm(dim=1) < 0.05).float().mean())
        return float((w.abs() < 1e-3).float().mean())

    plain, regd = trained_lenet(), trained_lenet()
    finetune(plain, digits, cfg, progress=False)
    finetune(regd, digits, cfg, callbacks=[SparsityRegularizer(regd, {"penalty": penalty, "strength": strength})], progress=False)
    assert small(regd) > small(plain) + 0.1, (small(regd), small(plain))


def test_sparse_train_prunes_what_the_penalty_drove_to_zero(digits, trained_lenet):
    model = trained_lenet()
    report = sparse_train(
        model,
        digits,
        {"penalty": "l1", "strength": 2e-4, "keep_first_last": False, "train": {"epochs": 3, "lr": 0.05, "batch_size": 32},
         "sparsity": 0.9, "finetune": {"epochs": 2, "lr": 0.02, "batch_size": 32}},
    )
    total = sum(l.params for l in report.layers)
    assert sum(l.params - l.nonzeros for l in report.layers) / total == pytest.approx(0.9, abs=1e-3)
    assert all(l.details["penalty"] == "l1" and l.details["sparsity_before"] == 0.0 for l in report.layers)
    for mod in (model.fc1, model.fc2, model.fc3):
        assert not bool(mod.weight[~mod.weight_mask].any())
    assert evaluate_accuracy(model, digits.loader("test", 512)) > 0.93
    assert report.meta["final_penalty"] > 0


def test_group_lasso_prunes_whole_units_by_threshold():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight[1] = 1e-4
        model[0].weight[3] = 0.0
    layers = prune_small_(model, [("0", model[0])], "group_lasso", threshold=1e-2)
    assert layers[0].details["units_pruned"] == 2
    assert not model[0].weight[[1, 3]].any() and model[0].weight[[0, 2, 4]].ne(0).all()


def test_sparse_train_config_errors_and_refusals():
    with pytest.raises(ConfigError, match="exactly one of 'threshold' and 'sparsity'"):
        SparseTrainConfig.parse({"penalty": "l1"})
    with pytest.raises(ConfigError, match="penalty"):
        SparseTrainConfig.parse({"penalty": "l0", "sparsity": 0.5})
    with pytest.raises(ConfigError, match="strength"):
        SparseTrainConfig.parse({"strength": 0, "sparsity": 0.5})
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransformRefusedError, match="no layer left to regularise"):
        SparsityRegularizer(model, {"targets": {"re:.*": None}})
    assert not list(iter_masks(model)) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sparse_train_stage_is_registered():
    from torchslim.recipe import parse_recipe

    r = parse_recipe({"name": "x", "model": "zoo:lenet300", "data": "digits",
                      "stages": [{"type": "sparse_train", "penalty": "group_lasso", "strength": 1e-3, "threshold": 0.01}]})
    assert r.stages[0].type == "sparse_train"
