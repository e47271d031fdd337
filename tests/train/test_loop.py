import pytest
import torch

from torchslim.data import load_data
from torchslim.errors import ConfigError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import prune_
from torchslim.train import Callback, TrainConfig, finetune
from torchslim.train.loop import lr_factor
from torchslim.zoo import create_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def mlp(seed=0):
    torch.manual_seed(seed)
    return create_model("lenet300", in_features=64)


def test_training_reaches_real_accuracy(digits):
    m = mlp()
    report = finetune(m, digits, {"epochs": 10, "lr": 0.05, "batch_size": 32}, progress=False)
    assert evaluate_accuracy(m, digits.loader("test")) > 0.95
    hist = report.meta["history"]
    assert len(hist) == 10 and hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["val_accuracy"] > 0.9


def test_same_seed_same_weights(digits):
    a, b = mlp(), mlp()
    cfg = {"epochs": 2, "lr": 0.05, "batch_size": 32, "seed": 7}
    finetune(a, digits, cfg, progress=False)
    finetune(b, digits, cfg, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "opt", [{"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}, {"optimizer": "adam", "weight_decay": 1e-3}, {"optimizer": "adamw", "weight_decay": 0.1}]
)
def test_pruned_weights_stay_exactly_zero(digits, opt):
    m = mlp()
    prune_(m, {"sparsity": 0.8, "keep_first_last": False})
    zero = {n: p == 0 for n, p in m.named_parameters() if n.endswith("weight")}
    finetune(m, digits, {"epochs": 2, "lr": 0.01, "batch_size": 32, **opt}, progress=False)
    for n, p in m.named_parameters():
        if n in zero:
            assert int((p[zero[n]] != 0).sum()) == 0
            assert int((p[~zero[n]] == 0).sum()) < 5  # the kept weights did train


def test_mask_survives_a_plain_user_loop(digits):
    m = mlp()
    prune_(m, {"sparsity": 0.8, "keep_first_last": False})
    zero = m.fc1.weight == 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for x, y in digits.loader("train", 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert int(zero.sum()) > 5000 and int((m.fc1.weight[zero] != 0).sum()) == 0  # the gradient hook kept them at zero


def test_callbacks_fire_in_order(digits):
    calls = []

    class Spy(Callback):
        def on_train_start(self, s): calls.append("start")
        def on_loss(self, s, loss):
            calls.append("loss")
            return loss + 0.0
        def on_step(self, s): calls.append("step")
        def on_epoch_end(self, s): calls.append(f"epoch{s.epoch}")
        def on_finalize(self, s): calls.append("end")

    finetune(mlp(), digits, {"epochs": 2, "max_steps": 3, "batch_size": 1000}, callbacks=[Spy()], progress=False)
    assert calls == ["start", "loss", "step", "loss", "step", "epoch0", "loss", "step", "epoch1", "end"]


def test_schedules():
    cos = TrainConfig(schedule="cosine", lr=1.0)
    assert lr_factor(cos, 0, 100, 10) == 1.0 and abs(lr_factor(cos, 50, 100, 10) - 0.5) < 1e-9
    step = TrainConfig(schedule="step", step_epochs=2, gamma=0.1)
    assert lr_factor(step, 19, 100, 10) == 1.0 and abs(lr_factor(step, 20, 100, 10) - 0.1) < 1e-12
    warm = TrainConfig(warmup_steps=4)
    assert lr_factor(warm, 0, 100, 10) == 0.25


def test_bad_train_config_names_every_field():
    with pytest.raises(ConfigError) as exc:
        TrainConfig.parse({"epochs": -1, "optimizer": "lion", "lr": 0})
    assert sorted(i.path for i in exc.value.issues) == ["epochs", "lr", "optimizer"]
    assert "'sgd', 'adam' or 'adamw'" in str(exc.value)


def test_nan_loss_stops_training_and_restores_the_model(digits):
    from torchslim.errors import TrainingDivergedError

    m = mlp()
    prune_(m, {"sparsity": 0.5})
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []

    class Spy(Callback):
        def on_abort(self, state):
            calls.append(("abort", state.step))

        def on_finalize(self, state):
            calls.append(("finalize", state.step))

    ce = torch.nn.CrossEntropyLoss()
    seen = {"n": 0}

    def loss_fn(logits, y):  # finite for 5 steps, then NaN: the weights have moved by then
        seen["n"] += 1
        return ce(logits, y) * (float("nan") if seen["n"] > 5 else 1.0)

    m.eval()
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 6 \(lr 0\.05\).*restored") as err:
        finetune(m, digits, {"epochs": 3, "lr": 0.05, "batch_size": 32}, callbacks=[Spy()], loss_fn=loss_fn, progress=False)
    assert (err.value.epoch, err.value.step, err.value.lr) == (1, 6, 0.05)
    assert calls == [("abort", 5)]  # on_abort instead of on_finalize
    after = m.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not m.training  # its mode too


def test_a_learning_rate_that_blows_up_is_caught(digits):
    from torchslim.errors import TrainingDivergedError

    m = mlp()
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(TrainingDivergedError, match="Lower 'lr'"):
        finetune(m, digits, {"epochs": 2, "lr": 1e12, "batch_size": 32}, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_the_epoch_line_says_there_is_no_validation_split_instead_of_nan(digits, capsys):
    batches = [(digits.train.x[i : i + 64], digits.train.y[i : i + 64]) for i in range(0, 256, 64)]  # no val split
    report = finetune(mlp(), batches, {"epochs": 1, "lr": 0.05}, progress=False)
    err = capsys.readouterr().err
    assert report.meta["history"][0]["val_accuracy"] != report.meta["history"][0]["val_accuracy"]  # NaN in the record
    assert "no validation split" in err and "nan%" not in err, err
    finetune(mlp(), digits, {"epochs": 1, "lr": 0.05}, progress=False)
    assert "val acc " in capsys.readouterr().err
