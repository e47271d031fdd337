"""Every technique has one shape (issue 18): one verb signature, versioned configs, and all-or-nothing changes.

The fault-injection tests raise an exception in each phase of each verb (selection, plan, apply — before
any mutation and after all of it — and report) and check that the model is exactly as it was: state dict
bit for bit, module classes, training mode, provenance, and outputs on a fixed input.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import torchslim as ts
import torchslim.stages.base as base
from torchslim.config import Config
from torchslim.encode import SHARE, share_weights_
from torchslim.errors import ConfigError
from torchslim.fold import DROP_LAYERS, FOLD, drop_layers_, fold_
from torchslim.graph import provenance
from torchslim.lowrank import FACTORIZE, factorize_
from torchslim.prune import PRUNE, PRUNE_STRUCTURED, prune_, prune_structured_
from torchslim.quant import QUANTIZE, quantize_
from torchslim.quant.mixed import MIXED_PRECISION, mixed_precision_
from torchslim.stages import STAGES, StageContext, run_stage
from torchslim.train import Callback

VERBS = [prune_, prune_structured_, quantize_, mixed_precision_, fold_, factorize_, share_weights_, drop_layers_]
ONE_SIGNATURE = ["model", "config", "filter_fn", "calibration", "example_input"]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v.__name__)
def test_every_verb_has_the_one_signature(verb: Callable[..., Any]) -> None:
    params = list(inspect.signature(verb).parameters.values())
    names = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
    extra = ["loss_fn"] if verb in (prune_, prune_structured_) else []
    assert names == ONE_SIGNATURE + extra
    assert params[0].kind is params[0].POSITIONAL_OR_KEYWORD and params[1].default is None
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in params[2:] if p.kind is not p.VAR_KEYWORD)
    assert params[-1].kind is params[-1].VAR_KEYWORD  # deprecated keyword names, each with a warning
    assert inspect.signature(verb).return_annotation in ("Report", ts.Report)


def _configs() -> list[type[Config]]:
    found: list[type[Config]] = []
    todo = [Config]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found and sub.__module__.startswith("torchslim"):
                found.append(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_the_config_list_is_complete():
    names = {c.__name__ for c in _configs()}
    assert {"PruneConfig", "StructuredPruneConfig", "QuantizeConfig", "FoldConfig", "FactorizeConfig", "ShareConfig",
            "DropLayersConfig", "DistillConfig", "TrainConfig", "CalibrationConfig", "MixedPrecisionConfig"} <= names


@pytest.mark.parametrize("cls", _configs(), ids=lambda c: c.__qualname__)
def test_every_config_refuses_an_unknown_version(cls: type[Config]) -> None:
    with pytest.raises(ConfigError) as info:
        cls.parse({"version": 99})
    issue = next(i for i in info.value.issues if i.path == "version")
    assert issue.value == 99 and "supported: 1" in issue.message


def test_a_renamed_key_warns_and_maps_to_its_new_place():
    with pytest.warns(DeprecationWarning, match="write 'calibration.batches' instead"):
        cfg = ts.QuantizeConfig.parse({"calibration_batches": 3})
    assert cfg.calibration.batches == 3
    with pytest.raises(ConfigError, match="give only 'calibration.batches'"), pytest.warns(DeprecationWarning):
        ts.QuantizeConfig.parse({"calibration_batches": 3, "calibration": {"batches": 4}})


def test_a_deprecated_verb_keyword_warns_and_still_works():
    data = ts.load_data("digits")
    model = ts.create_model("lenet300", in_features=64)
    with pytest.warns(DeprecationWarning, match=r"call prune_\(\.\.\., calibration=\.\.\.\)"):
        report = prune_(model, {"sparsity": 0.5, "criterion": "taylor"}, loader=data.loader("train", 64))
    assert report.layers and report.layers[0].details["criterion"] == "taylor"
    with pytest.raises(TypeError, match="unexpected keyword argument 'loadr'"):
        prune_(model, {"sparsity": 0.5}, loadr=[])


# -- fault injection --------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    tech: Any
    verb: Callable[..., Any]
    build: Callable[[], nn.Module]
    config: dict[str, Any]
    x: torch.Tensor
    calibration: bool = False
    example: bool = False


def _digits() -> Any:
    return ts.load_data("digits")


def _lenet300() -> nn.Module:
    torch.manual_seed(0)
    return ts.create_model("lenet300", in_features=64)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return ts.create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10).eval()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return ts.create_model("transformer_encoder", image_size=8, patch_size=4)


def _lenet5() -> nn.Module:
    torch.manual_seed(0)
    return ts.create_model("lenet5")


X64 = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
X8 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
X28 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))

CASES = [
    Case("prune-element", PRUNE, prune_, _lenet300, {"sparsity": 0.8, "criterion": "taylor"}, X64, calibration=True),
    Case("prune-nm", PRUNE, prune_, _lenet300, {"granularity": "nm", "n": 2, "m": 4}, X64),
    Case("prune-channel", PRUNE_STRUCTURED, prune_, _resnet, {"granularity": "channel", "macs_target": 0.5}, X8, example=True),
    Case("prune-block", PRUNE_STRUCTURED, prune_, _resnet, {"granularity": "block", "sparsity": 0.5}, X8, example=True),
    Case("prune-head", PRUNE_STRUCTURED, prune_, _vit, {"granularity": "head", "sparsity": 0.5}, X8, example=True),
    Case("quantize-static", QUANTIZE, quantize_, _lenet5, {"mode": "static", "weight": {"bits": 4}}, X28, calibration=True),
    Case("quantize-weight-only", QUANTIZE, quantize_, _lenet300, {"mode": "weight_only"}, X64),
    Case("mixed-precision", MIXED_PRECISION, mixed_precision_, _lenet300, {"candidate_bits": [2, 4, 8]}, X64, calibration=True),
    Case("fold", FOLD, fold_, _resnet, {}, X8),
    Case("factorize", FACTORIZE, factorize_, _lenet300, {"energy": 0.8}, X64),
    Case("share", SHARE, share_weights_, _lenet300, {"bits": 3}, X64),
    Case("drop-layers", DROP_LAYERS, drop_layers_, _vit, {"k": 1}, X8, calibration=True),
]


class Injected(RuntimeError):
    pass


def _fingerprint(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = probe(x)
    return {
        "state": {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()},
        "classes": [(n, type(m)) for n, m in model.named_modules()],
        "params": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
        "provenance": provenance.records(model),
        "out": out,
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k, (dtype, value) in a["state"].items():
        assert b["state"][k][0] == dtype and torch.equal(b["state"][k][1], value), k
    for key in ("classes", "params", "training", "provenance"):
        assert a[key] == b[key], key
    assert torch.equal(a["out"], b["out"])


def _inputs(case: Case) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if case.calibration:
        d = _digits()
        if case.x.shape[1:] == (64,):
            kw["calibration"] = [(x.flatten(1), y) for x, y in d.loader("train", 64)][:4]
        elif case.x.shape[-1] == 28:
            kw["calibration"] = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        else:
            kw["calibration"] = [x for x, _ in d.loader("train", 64)][:4]
    if case.example:
        kw["example_input"] = case.x[:1]
    return kw


def _raise_before(name: str) -> Callable[..., Any]:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise Injected(f"injected before {name}")

    return raiser


def _raise_after(real: Callable[..., Any], name: str) -> Callable[..., Any]:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Injected(f"injected after {name}")

    return raiser


PHASES = ["select", "plan", "apply-before", "apply-after", "report"]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_failure_in_any_phase_leaves_the_model_bit_identical(case: Case, phase: str, monkeypatch) -> None:
    kw = _inputs(case)
    reference = case.build()
    case.verb(reference, copy.deepcopy(case.config), **kw)  # the verb works on this model and config
    model = case.build()
    before = _fingerprint(model, case.x)
    method = phase.split("-")[0]
    real = getattr(case.tech, method)
    patched = _raise_after(real, method) if phase == "apply-after" else _raise_before(method)
    monkeypatch.setattr(case.tech, method, patched)
    with pytest.raises(Injected):
        case.verb(model, copy.deepcopy(case.config), **kw)
    _assert_same(before, _fingerprint(model, case.x))


class _Boom(Callback):
    def on_step(self, state):
        if state.step == 3:
            raise Injected("injected during the stage's fine-tune")


def test_a_stage_that_fails_in_its_finetune_leaves_the_model_bit_identical(monkeypatch) -> None:
    data = _digits()
    model = _lenet300()
    before = _fingerprint(model, X64)
    spec = STAGES.get("share")
    real = base.finetune
    monkeypatch.setattr(base, "finetune", lambda *a, **k: real(*a, **{**k, "callbacks": [_Boom()]}))
    ctx = StageContext(data, "share", False, finetune=ts.TrainConfig(epochs=1, lr=0.01))
    with pytest.raises(Injected):
        run_stage(spec, model, spec.config.parse({"bits": 3}), ctx)
    _assert_same(before, _fingerprint(model, X64))
