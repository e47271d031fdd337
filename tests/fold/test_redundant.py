"""drop_layers_: block influence (ShortGPT), weight similarity, random and last-k."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.data import load_data
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.fold.redundant import DropLayersConfig, block_influence, candidate_blocks, drop_layers_
from torchslim.graph.surgery import remove_from_container
from torchslim.measure import evaluate_accuracy
from torchslim.report import unaccounted_parameters
from torchslim.train import finetune
from torchslim.zoo import create_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared, loaded 2-core machine run far faster (and steadier) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Scaled(nn.Module):
    """x + s·f(x): with s = 0 the block is the identity (perfectly redundant)."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.f, self.s = nn.Linear(8, 8), s

    def forward(self, x):
        return x + self.s * torch.tanh(self.f(x))


def test_block_influence_ranks_an_identity_block_most_redundant():
    torch.manual_seed(0)
    model = nn.Sequential(Scaled(3.0), Scaled(0.0), Scaled(1.0), Scaled(0.1))
    x = torch.randn(64, 8)
    scores = block_influence(model, ["0", "1", "2", "3"], [x], torch.Generator())
    assert scores["1"] == pytest.approx(1.0)
    assert scores["1"] > scores["3"] > scores["2"] > scores["0"]
    ref = model(x)
    report = drop_layers_(model, {"k": 2}, calibration=[(x, None)])
    assert [l.name for l in report.layers] == ["1", "3"]
    assert len(model) == 2 and model[0].s == 3.0 and model[1].s == 1.0
    assert float((model(x) - ref).abs().max().detach()) < 0.5  # removing near-identities changes little


def test_output_similarity_skips_the_blocks_the_output_notices_least():
    """Greedy output similarity finds the identity block, then the weakest one; the result matches the scores."""
    torch.manual_seed(0)
    model = nn.Sequential(Scaled(3.0), Scaled(0.0), Scaled(1.0), Scaled(0.1), nn.Linear(8, 4))
    x = torch.randn(64, 8)
    ref = model(x).detach()
    report = drop_layers_(model, {"k": 2, "criterion": "output_similarity", "blocks": "[0-3]"}, calibration=[x])
    assert report.meta["removed"] == ["1", "3"]
    assert report.meta["scores"]["1"] == pytest.approx(1.0)  # an identity block: skipping it changes nothing
    out = model(x).detach()
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1).mean()
    assert float(cos) == pytest.approx(report.meta["scores"]["3"], abs=1e-6)  # the greedy score is the real outcome
    with pytest.raises(TransformRefusedError, match="output_similarity needs calibration"):
        drop_layers_(model, {"k": 1, "criterion": "output_similarity", "blocks": "[01]"})


def test_candidates_criteria_and_refusals():
    m = create_model("transformer_encoder", image_size=8, patch_size=4, dim=16, depth=4, num_heads=2)
    assert candidate_blocks(m) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    r = drop_layers_(copy.deepcopy(m), {"k": 2, "criterion": "last"})
    assert r.meta["removed"] == ["blocks.3", "blocks.2"]
    r1 = drop_layers_(copy.deepcopy(m), {"k": 1, "criterion": "random", "seed": 3})
    r2 = drop_layers_(copy.deepcopy(m), {"k": 1, "criterion": "random", "seed": 3})
    assert r1.meta["removed"] == r2.meta["removed"]
    twin = copy.deepcopy(m)
    twin.blocks[2].load_state_dict(twin.blocks[1].state_dict())  # block 2 duplicates block 1
    r = drop_layers_(twin, {"k": 1, "criterion": "weight_similarity"})
    assert r.meta["removed"] == ["blocks.2"] and len(twin.blocks) == 3
    state = copy.deepcopy(m.state_dict())
    with pytest.raises(TransformRefusedError, match="calibration"):
        drop_layers_(m, {"k": 1})
    with pytest.raises(TransformRefusedError, match="only 4 removable"):
        drop_layers_(m, {"k": 5, "criterion": "last"})
    assert m.state_dict().keys() == state.keys()
    with pytest.raises(ConfigError, match="criterion"):
        DropLayersConfig.parse({"criterion": "cosine"})
    resnet = create_model("resnet_cifar", depth=20, in_channels=1)
    scores = block_influence(resnet, ["layer2.0", "layer2.1"], [torch.randn(2, 1, 28, 28)], torch.Generator())
    assert scores["layer2.0"] != scores["layer2.0"]  # downsampling block: NaN, not removable
    with pytest.raises(Exception, match="not an item"):
        remove_from_container(resnet, ["layer1.0.conv1"])


def test_similarity_choice_heals_at_least_as_well_as_last_k_on_digits():
    data = load_data("digits")
    torch.manual_seed(0)
    base = create_model("transformer_encoder", image_size=8, patch_size=4, dim=32, depth=4, num_heads=4)
    finetune(base, data, {"epochs": 12, "lr": 3e-3, "optimizer": "adamw", "batch_size": 64}, progress=False)
    full = evaluate_accuracy(base, data.loader("test", 512))
    calib = [x for x, _ in data.loader("train", 128)][:4]
    accs = {}
    for crit in ("block_influence", "last"):
        m = copy.deepcopy(base)
        drop_layers_(m, {"k": 2, "criterion": crit}, calibration=calib)
        assert len(m.blocks) == 2
        accs[crit] = evaluate_accuracy(m, data.loader("test", 512))
    assert full > 0.85
    assert accs["block_influence"] >= accs["last"] - 0.02, accs


def test_drop_layers_is_a_technique_with_the_one_signature():
    from torchslim.fold import DROP_LAYERS
    from torchslim.technique import Technique

    assert isinstance(DROP_LAYERS, Technique) and DROP_LAYERS.name == "drop_layers"
    torch.manual_seed(0)
    model = nn.Sequential(Scaled(3.0), Scaled(0.0), Scaled(1.0), Scaled(0.1))
    x = torch.randn(32, 8)
    report = drop_layers_(model, calibration=[x], filter_fn=lambda m, n: n != "1")  # config=None: k=1, block_influence
    assert report.meta["removed"] == ["3"] and len(model) == 3
    scores = report.meta["scores"]
    assert [(s.name, s.reason) for s in report.skipped] == [("1", "rejected by filter_fn")] + [
        (b, f"kept: block_influence score {scores[b]:.4g}, less redundant than the k=1 removed (3)") for b in ("0", "2")
    ]  # one entry per block kept, none per layer inside it
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(TransformRefusedError, match="no candidate blocks"):
        drop_layers_(model, {"blocks": "nothing"}, calibration=[x])
    with pytest.raises(TransformRefusedError, match="only 3 removable"):
        drop_layers_(model, {"k": 4}, calibration=[x])
    with pytest.raises(TransformRefusedError, match="no layer left to remove: 0: rejected by filter_fn"):
        drop_layers_(model, {"criterion": "weight_similarity"}, filter_fn=lambda m, n: False)
    assert len(model) == 3 and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_layers_outside_every_candidate_block_are_named_with_the_verb_s_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Sequential(Scaled(0.0), Scaled(1.0)))
    report = drop_layers_(model, {"blocks": r"2\.\d+", "k": 1}, calibration=[torch.randn(4, 8)])
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["1"] == (
        "LayerNorm: in no candidate block (drop_layers_ removes whole blocks, chosen by `blocks`); weight, bias left as they were"
    )  # not "normalisation parameters ... are not removed": no layer is ever removed alone
    assert reasons["0"].startswith("Linear: in no candidate block") and set(reasons) == {"0", "1", "2.1"}
    assert unaccounted_parameters(model, report) == []
