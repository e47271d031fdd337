"""No silent skip (issue 20, item 4): after every verb, every parameter tensor is transformed or listed as skipped.

One model holds every everyday parameter kind (Conv2d + BatchNorm, Linear, LayerNorm, Embedding, GRU,
``nn.MultiheadAttention``, a Sequential of blocks and a bare ``nn.Parameter`` held by the model itself); every
verb runs on it and its report must account for every parameter, each skipped entry with a reason, and every
entry the driver adds naming the layer kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim as ts
import torchslim.prune.regularize as regularize
import torchslim.technique as technique
from torchslim.config import Config
from torchslim.data.core import DataBundle, Split
from torchslim.quant.config import WeightQuantConfig
from torchslim.quant.coverage import unaccounted_parameters as quant_unaccounted
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.mixed import MIXED_PRECISION
from torchslim.quant.ptq import QUANTIZE
from torchslim.report import LayerReport, Report, SkippedLayer, skip_reason, unaccounted_parameters, unlisted_layers
from torchslim.technique import Inputs, Plan, Technique, run


class Mixed(nn.Module):
    """Conv2d + BatchNorm on an image; Embedding → GRU → attention → LayerNorm on tokens read from it; an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Embedding(20, 16)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(24, 32)
        self.blocks = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
        self.fc2 = nn.Linear(32, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x))).mean((2, 3))
        tokens = (x[:, 0, 0, :6].abs() * 5).long().clamp(max=19)
        r, _ = self.gru(self.emb(tokens))
        a, _ = self.attn(r, r, r, need_weights=False)
        t = self.norm(a + r).mean(1)
        z = self.blocks(F.relu(self.fc1(torch.cat([h, t], 1))))
        return self.fc2(z) * self.scale


_g = torch.Generator().manual_seed(0)
X, Y = torch.randn(64, 3, 8, 8, generator=_g), torch.randint(0, 4, (64,), generator=_g)
BATCHES = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 64, 16)]
DATA = DataBundle("mixed", Split(X, Y), Split(X[:16], Y[:16]), Split(X[:16], Y[:16]), 4, (3, 8, 8))

VERBS: dict[str, Callable[[nn.Module], Report]] = {
    "prune_element": lambda m: ts.prune_(m, {"sparsity": 0.5}),
    "prune_nm": lambda m: ts.prune_(m, {"granularity": "nm", "n": 2, "m": 4}),
    "prune_channel": lambda m: ts.prune_(m, {"granularity": "channel", "sparsity": 0.5}, example_input=X[:2]),
    "prune_head": lambda m: ts.prune_(m, {"granularity": "head", "sparsity": 0.5}, example_input=X[:2]),
    "quantize_weight_only": lambda m: ts.quantize_(m, {"mode": "weight_only"}),
    "quantize_static": lambda m: ts.quantize_(m, {"mode": "static"}, calibration=BATCHES),
    "mixed_precision": lambda m: ts.mixed_precision_(m, {"average_bits": 6, "candidate_bits": [4, 8]}, calibration=BATCHES),
    "fold": lambda m: ts.fold_(m),
    "drop_layers": lambda m: ts.drop_layers_(m, {"blocks": r"blocks\.\d+", "k": 1}, calibration=BATCHES),
    "factorize": lambda m: ts.factorize_(m, {"ratio": 0.5, "keep_first_last": False}),
    "share_weights": lambda m: ts.share_weights_(m, {"bits": 2}),
    "prune_with_schedule": lambda m: ts.prune_with_schedule(
        m, DATA, {"sparsity": 0.5, "schedule": {"kind": "iterative", "rounds": 2, "finetune": {"epochs": 1}}}
    ),
    "sparse_train": lambda m: ts.sparse_train(m, DATA, {"train": {"epochs": 1}, "sparsity": 0.5}),
}


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[SkippedLayer]:
    """Record every entry the no-silent-skip sweep adds (the driver's and sparse_train's)."""
    added: list[SkippedLayer] = []

    def recording(*args: Any, **kwargs: Any) -> list[SkippedLayer]:
        out = unlisted_layers(*args, **kwargs)
        added.extend(out)
        return out

    monkeypatch.setattr(technique, "unlisted_layers", recording)
    monkeypatch.setattr(regularize, "unlisted_layers", recording)
    return added


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_accounts_for_every_parameter(verb: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    added = _spy(monkeypatch)
    report = VERBS[verb](model)
    assert report.layers, "the verb transformed nothing: the test model no longer exercises it"
    assert unaccounted_parameters(model, report) == []
    assert all(s.reason.strip() for s in report.skipped)
    names = [s.name for s in report.skipped]
    assert len(names) == len(set(names)), names
    modules = dict(model.named_modules())
    for entry in added:  # the sweep names the layer kind, and only layers the report left out
        assert type(modules[entry.name]).__name__ in entry.reason, entry
        assert entry.name not in [layer.name for layer in report.layers]
    assert "scale" not in dict(model.named_parameters()) or "" in names  # the model's own parameter is listed


def test_prune_names_the_embedding_recurrent_and_attention_weights_it_leaves_dense() -> None:
    model = Mixed()
    report = ts.prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["emb"] == (
        "Embedding: prune_ masks Linear, Conv1d/2d/3d weights (not this layer kind); its table (weight) is left dense"
    )
    assert reasons["gru"].startswith("GRU: recurrent weights are not pruned")
    assert reasons["attn"].startswith("MultiheadAttention: its packed input projection (in_proj_weight, in_proj_bias)")
    assert reasons["norm"] == "LayerNorm: normalisation parameters (weight, bias) are not pruned"
    assert reasons[""].startswith("Mixed (the model itself) holds scale directly")
    assert "attn.out_proj" in [layer.name for layer in report.layers]  # a Linear inside the attention is pruned
    assert model.emb.weight.count_nonzero() == model.emb.weight.numel()


def test_mixed_precision_quantizes_the_gru_attention_and_embedding() -> None:
    model = Mixed().eval()  # regression: AttributeError 'GRU' object has no attribute 'weight'
    report = VERBS["mixed_precision"](model)
    assert {"gru", "attn", "emb"} <= set(report.meta["bits"]) and {"gru", "attn", "emb"} <= {x.name for x in report.layers}
    assert [s.name for s in report.skipped] == ["", "norm"]


@pytest.mark.parametrize("tech", [QUANTIZE, MIXED_PRECISION])
def test_a_quantizer_step_size_belongs_to_the_quantization(tech: Technique[Any, Any]) -> None:
    fq = FakeQuantize(WeightQuantConfig().spec(), learn_scale=True)
    assert tech.skip_reason("0.weight_fq", fq, ["log_scale"]) is None
    assert tech.skip_reason("1", nn.PReLU(), ["weight"]).startswith(f"PReLU: {tech.function or tech.name + '_'} handles")
    assert MIXED_PRECISION.function == "mixed_precision_"


def test_each_verb_names_what_it_handles_and_why_it_left_a_layer() -> None:
    reasons = {verb: {s.name: s.reason for s in VERBS[verb](Mixed().eval()).skipped} for verb in
               ("fold", "factorize", "share_weights", "drop_layers")}
    assert reasons["fold"]["emb"].startswith("Embedding: fold_ handles BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv1d")
    assert reasons["fold"]["attn.out_proj"].startswith("NonDynamicallyQuantizableLinear: nothing to fold with")
    assert reasons["factorize"]["gru"].startswith("GRU: factorize_ handles Linear, Conv2d (not this layer kind)")
    assert reasons["share_weights"]["gru"] == (
        "GRU: bias_ih_l0, bias_hh_l0 are not shared (share_weights_ clusters parameters of two or more dimensions)"
    )
    assert reasons["share_weights"][""].startswith("Mixed (the model itself) holds scale directly: share_weights_ ")
    drop = reasons["drop_layers"]
    assert drop["blocks.0"].startswith("kept: block_influence score ") and drop["blocks.0"].endswith("(blocks.1)")
    assert drop["norm"].startswith("LayerNorm: in no candidate block (drop_layers_ removes whole blocks")
    assert not [n for n in drop if n.startswith("blocks.0.")]
    pruned = VERBS["prune_channel"](Mixed().eval())
    channel = {s.name: s.reason for s in pruned.skipped}
    assert channel["fc2"].startswith("partly pruned (see its layer row); this group's channels were kept: frozen: ")
    assert "fc2" in {layer.name for layer in pruned.layers}
    assert channel["emb"] == "frozen: module gru (GRU) is not understood by the pruning engine"  # its columns feed the GRU


def test_selection_reasons_are_kept_and_not_repeated() -> None:
    report = ts.prune_(Mixed(), {"sparsity": 0.5, "targets": {"fc1": {}, "conv": None}})
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["conv"] == "excluded by targets['conv'] = null"
    assert reasons["fc2"] == "not matched by any targets key"
    assert [s.name for s in report.skipped].count("conv") == 1


def test_parameters_a_transform_removes_belong_to_the_layer_that_absorbed_them() -> None:
    model = Mixed().eval()
    report = ts.fold_(model)
    assert {layer.name: layer.details.get("absorbed") for layer in report.layers}["conv"] == "bn"
    assert "bn" not in [s.name for s in report.skipped] and unaccounted_parameters(model, report) == []
    model = Mixed()
    report = ts.factorize_(model, {"ratio": 0.5, "keep_first_last": False})
    assert isinstance(model.conv, nn.Sequential) and "conv" in [layer.name for layer in report.layers]
    assert not [s for s in report.skipped if s.name.startswith("conv.")]


def test_a_parameter_named_in_the_report_accounts_for_itself_only() -> None:
    model = nn.Sequential(nn.GRU(2, 2))
    report = Report("t", layers=[LayerReport.of("0.weight_ih_l0", model[0], "shared", weight=model[0].weight_ih_l0)])
    assert unaccounted_parameters(model, report) == ["0.weight_hh_l0", "0.bias_ih_l0", "0.bias_hh_l0"]
    report.skipped = [SkippedLayer("", "the model itself")]  # covers only what the model holds directly
    assert len(unaccounted_parameters(model, report)) == 3


def test_quant_coverage_keeps_its_quantizer_exemption() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model.step = nn.Module()
    model.step.log_scale = nn.Parameter(torch.zeros(1))
    report = Report("t", layers=[LayerReport.of("0", model[0])])
    assert quant_unaccounted(model, report) == ["step.log_scale"]  # a plain module is no quantizer
    assert unaccounted_parameters(model, report, exempt=lambda m: hasattr(m, "log_scale")) == []


class _ScaleConfig(Config):
    factor: float = 2.0


class _Scale(Technique[_ScaleConfig, Plan]):
    """Scales Linear weights; its own ``gain`` parameters belong to the transform, LayerNorm gets its own reason."""

    name, title, config, verb = "scale", "scale", _ScaleConfig, "scale"
    handles = (nn.Linear,)

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def plan(self, model: nn.Module, cfg: _ScaleConfig, selection: Any, inputs: Inputs) -> Plan:
        return Plan(selection.skipped, {}, [(n, m) for n, m, _ in selection.chosen])

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        model.gain = nn.Parameter(torch.ones(1))
        return [LayerReport.of(n, m, "scaled") for n, m in plan.work]

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        if name == "":
            return None
        return "LayerNorm: scaled elsewhere" if isinstance(module, nn.LayerNorm) else super().skip_reason(name, module, params)


def test_a_technique_gives_its_own_reasons_through_the_hook() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.PReLU())
    report = run(_Scale(), model)
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("1", "LayerNorm: scaled elsewhere"),
        ("2", "PReLU: scale_ handles Linear (not this layer kind); weight left as it was"),
    ]
    assert unaccounted_parameters(model, report) == ["gain"]  # the hook said the transform owns it: no entry


def test_the_generic_reason_names_the_kind() -> None:
    assert skip_reason("x", nn.BatchNorm1d(2), ["weight", "bias"], "fold_", "folded") == (
        "BatchNorm1d: normalisation parameters (weight, bias) are not folded"
    )


class _Broken(_Scale):
    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        raise RuntimeError("no reason")


def test_the_sweep_runs_inside_the_transaction() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="no reason"):
        run(_Broken(), model)
    assert not hasattr(model, "gain") and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
