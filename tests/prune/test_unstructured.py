import pytest
import torch

from torchslim.data import load_data
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import PruneConfig, iter_masks, prune_, remove_masks
from torchslim.train import finetune
from torchslim.zoo import create_model


def lenet(seed=0):
    torch.manual_seed(seed)
    return create_model("lenet300")


def weights(m):
    return {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}


def test_global_magnitude_prunes_exactly_the_smallest_weights():
    m = lenet()
    w = weights(m)
    report = prune_(m, {"sparsity": 0.9, "keep_first_last": False})
    allw = torch.cat([t.abs().flatten() for t in w.values()])
    k = round(0.9 * allw.numel())
    threshold = allw.sort().values[k - 1]
    zeros = sum(int((mod.weight == 0).sum()) for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    assert zeros == k
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            kept = mod.weight != 0
            assert bool((w[name].abs()[kept] >= threshold).all())
            assert bool((w[name].abs()[~kept] <= threshold).all())
            assert bool((mod.bias != 0).all())  # biases are never pruned
    assert [l.name for l in report.layers] == ["fc1", "fc2", "fc3"] and not report.skipped


def test_first_and_last_layers_kept_by_default_and_reported():
    m = lenet()
    report = prune_(m, PruneConfig(sparsity=0.5))
    assert [l.name for l in report.layers] == ["fc2"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {"fc1", "fc3"} and "first layer kept" in reasons["fc1"]
    assert int((m.fc1.weight == 0).sum()) == 0
    # naming a layer exactly in targets overrides keep_first_last
    report = prune_(m, {"sparsity": 0.5, "targets": {"fc1": {"sparsity": 0.8}, "re:fc[23]": {}}})
    assert abs(report.layers[0].sparsity - 0.8) < 1e-6
    assert "fc3" in {s.name for s in report.skipped}  # matched by a regex only: still kept


def test_layer_scope_and_per_layer_overrides():
    m = lenet()
    report = prune_(m, {"sparsity": 0.7, "scope": "layer", "keep_first_last": False, "targets": {"fc3": None, "fc2": {"sparsity": 0.5}, "re:.*": {}}})
    s = {l.name: l.sparsity for l in report.layers}
    assert abs(s["fc1"] - 0.7) < 1e-4 and abs(s["fc2"] - 0.5) < 1e-4
    assert report.skipped[0].name == "fc3" and "null" in report.skipped[0].reason


def test_iterative_pruning_keeps_earlier_zeros():
    m = lenet()
    prune_(m, {"sparsity": 0.5, "keep_first_last": False})
    first = {n: mod.weight == 0 for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    prune_(m, {"sparsity": 0.8, "keep_first_last": False})
    total = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    zeros = sum(int((mod.weight == 0).sum()) for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    assert zeros == round(0.8 * total)
    for n, z in first.items():
        assert bool((getattr(m, n).weight[z] == 0).all())


def test_refusals_leave_the_model_unchanged():
    m = lenet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match="targets.fc9"):
        prune_(m, {"sparsity": 0.5, "targets": {"fc9": {}}})
    with pytest.raises(TransformRefusedError, match="no layer left"):
        prune_(m, {"sparsity": 0.5, "targets": {"re:.*": None}})
    assert not list(iter_masks(m))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize(
    "cfg,field",
    [({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"sparsity": 0.5, "criterion": "taylorr"}, "criterion"),
     ({"sparsity": 0.5, "scope": "world"}, "scope"), ({"sparsity": 0.5, "sparsty": 1}, "sparsty")],
)
def test_bad_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as exc:
        PruneConfig.parse(cfg)
    assert exc.value.issues[0].path == field
    if field == "criterion":
        assert "registered: activation_max" in str(exc.value) and "magnitude" in str(exc.value)


def test_magnitude_beats_random_on_real_data():
    data = load_data("digits")
    base = create_model("lenet300", in_features=64)
    torch.manual_seed(0)
    finetune(base, data, {"epochs": 15, "lr": 0.05, "batch_size": 32}, progress=False)
    acc = {}
    for crit in ("magnitude", "random"):
        m = create_model("lenet300", in_features=64)
        m.load_state_dict(base.state_dict())
        prune_(m, {"sparsity": 0.8, "criterion": crit, "keep_first_last": False})
        acc[crit] = evaluate_accuracy(m, data.loader("test", 512))
    assert acc["magnitude"] > 0.85 and acc["magnitude"] > acc["random"] + 0.2, acc


def test_remove_masks_makes_pruning_permanent():
    m = lenet()
    prune_(m, {"sparsity": 0.5, "keep_first_last": False})
    assert remove_masks(m) == 3 and not list(iter_masks(m))
    assert "fc1.weight_mask" not in m.state_dict()
    assert int((m.fc1.weight == 0).sum()) > 0


def test_one_verb_signature_and_the_technique_objects():
    import inspect

    from torchslim.prune import PRUNE, PRUNE_STRUCTURED, prune_structured_
    from torchslim.prune.unstructured import prune_ as prune_masks_

    for verb in (prune_, prune_masks_):
        params = list(inspect.signature(verb).parameters.values())
        assert [p.name for p in params] == ["model", "config", "filter_fn", "calibration", "example_input", "loss_fn", "deprecated"]
    assert [p.name for p in inspect.signature(prune_structured_).parameters.values()] == [
        "model", "config", "filter_fn", "calibration", "example_input", "loss_fn", "deprecated"]
    assert (PRUNE.name, PRUNE_STRUCTURED.name) == ("prune", "prune_structured")


def test_deprecated_loader_keyword_warns_and_gives_the_same_masks():
    data = load_data("digits")
    cfg = {"sparsity": 0.7, "criterion": "taylor", "keep_first_last": False}
    m1, m2 = create_model("lenet300", in_features=64), create_model("lenet300", in_features=64)
    m2.load_state_dict(m1.state_dict())
    with pytest.warns(DeprecationWarning, match=r"prune_\(..., loader=...\) is deprecated; call prune_\(..., calibration=...\)"):
        prune_(m1, cfg, loader=data.loader("train", 128))
    prune_(m2, cfg, calibration=data.loader("train", 128))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(TypeError, match="both loader= .deprecated. and calibration="):
        prune_(m1, cfg, loader=[], calibration=[])


def test_a_failure_while_attaching_masks_leaves_the_model_bit_identical(monkeypatch):
    import torchslim.prune.unstructured as unstructured

    m = lenet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    real, calls = unstructured.attach_mask, []

    def attach_then_fail(module, name, mask):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected while attaching")
        real(module, name, mask)

    monkeypatch.setattr(unstructured, "attach_mask", attach_then_fail)
    with pytest.raises(RuntimeError, match="injected while attaching"):
        prune_(m, {"sparsity": 0.5, "keep_first_last": False})
    assert not list(iter_masks(m)) and set(m.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_gpt2_conv1d_layers_are_masked_and_a_sparse_tslim_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torchslim as ts
    from torchslim.graph.surgery import is_conv1d
    from torchslim.report import unaccounted_parameters

    def build():
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
        return transformers.GPT2LMHeadModel(cfg).eval()

    model = build()
    conv1d = [n for n, m in model.named_modules() if is_conv1d(m)]
    report = prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    assert set(conv1d) <= {layer.name for layer in report.layers}
    assert not [s for s in report.skipped if s.name in conv1d] and unaccounted_parameters(model, report) == []
    masked = {name: mask for name, _, pname, mask in iter_masks(model) if pname == "weight"}
    for name in conv1d:
        module = model.get_submodule(name)
        assert masked[name].shape == module.weight.shape  # (in, out), the module's own layout
        assert torch.equal(module.weight.detach() != 0, masked[name])
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
    path = ts.save(model, tmp_path / "gpt2.tslim")
    restored = build()
    restored = ts.load(path, lambda: restored)
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, ref)
    restored_masks = {name: mask for name, _, pname, mask in iter_masks(restored) if pname == "weight"}
    for name in conv1d:
        assert torch.equal(restored.get_submodule(name).weight, model.get_submodule(name).weight)
        assert torch.equal(restored_masks[name], masked[name])  # the masks come back, in the (in, out) layout


def test_a_frozen_model_prunes_and_its_masks_hold_once_it_trains():
    """Parameters with requires_grad=False (a frozen backbone) have no gradient to hook: pruning crashed on them
    ('cannot register a hook on a tensor that doesn't require gradient')."""
    from torchslim.prune.mask import reattach_masks

    model = create_model("lenet300", in_features=64)
    for p in model.parameters():
        p.requires_grad_(False)
    prune_(model, {"sparsity": 0.5})
    zero = ~model.fc2.weight_mask
    assert bool((model.fc2.weight[zero] == 0).all()) and 0.45 < float(zero.float().mean()) < 0.55
    for p in model.parameters():
        p.requires_grad_(True)
    reattach_masks(model)
    model(torch.randn(4, 64)).sum().backward()
    assert bool((model.fc2.weight.grad[zero] == 0).all())
