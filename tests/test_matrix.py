"""The architecture matrix (issue 20, acceptance 1): every reference model x every technique works, checked by
numbers, or refuses naming a layer with the model bit-identical; never a crash, a broken model or an
unaccounted parameter. ``python -m torchslim.testing.matrix`` prints the same cells as a table."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, ConfigIssue, TransformRefusedError
from torchslim.testing import ARCHITECTURES, Architecture
from torchslim.testing.architectures import HUGGING_FACE, has_transformers, minilm
from torchslim.testing.matrix import TECHNIQUES, Outcome, main, named_layer, run_cell, run_matrix, table


@functools.cache
def _arch(name: str) -> Architecture:
    if name == "minilm":  # the pretrained MiniLM cut to one layer and 2,000 words: the same code paths, in seconds
        return minilm(layers=1, vocab=2000)  # (python -m torchslim.testing.matrix runs it whole)
    return ARCHITECTURES[name]()


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_cell_works_or_refuses_naming_a_layer(name: str, technique: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the accuracy guard's warnings on random weights
        outcome = run_cell(name, _arch(name), technique)
    assert outcome.status != "FAILED", f"{name} / {technique}: {outcome.message}"


def test_every_architecture_is_seeded_and_deterministic() -> None:
    a, b = ARCHITECTURES["concat_se"](), ARCHITECTURES["concat_se"]()
    assert not a.model.training and all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert torch.equal(a.example, b.example) and len(a.calibration) == 4
    assert set(HUGGING_FACE) <= set(ARCHITECTURES) or not has_transformers()


def test_a_refusal_that_changes_the_model_or_names_no_layer_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    arch = _arch("mlp")

    def refuse_after_damage(model: nn.Module, _arch: Architecture) -> str:
        with torch.no_grad():
            model.fc1.weight.zero_()
        raise TransformRefusedError("layer fc1 cannot be pruned")

    monkeypatch.setitem(TECHNIQUES, "bad", refuse_after_damage)
    out = run_cell("mlp", arch, "bad")
    assert (out.status, out.detail) == ("FAILED", "refused but fc1.weight changed")
    monkeypatch.setitem(TECHNIQUES, "bad", lambda m, a: (_ for _ in ()).throw(ConfigError([ConfigIssue("x", "nothing here")])))
    assert run_cell("mlp", arch, "bad").detail == "refusal names no layer: 1 error(s) in config - x: nothing here"
    monkeypatch.setitem(TECHNIQUES, "bad", lambda m, a: (_ for _ in ()).throw(TransformRefusedError("fc2: no")))
    assert run_cell("mlp", arch, "bad").cell() == "refused: fc2"
    monkeypatch.setitem(TECHNIQUES, "bad", lambda m, a: 1 / 0)
    assert run_cell("mlp", arch, "bad").cell() == "FAILED: ZeroDivisionError: division by zero"
    assert named_layer(arch.model, "sparsity 0.5 of fc1.") == "fc1"


def test_the_command_prints_the_table_and_takes_a_model_of_ones_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "mlp", "--techniques", "fold,nm", "--model", "tests.test_matrix:tiny"]) == 0
    printed = capsys.readouterr().out
    assert "| mlp " in printed and "| tests.test_matrix:tiny " in printed and "4 cells: 4 works, 0 refused, 0 FAILED" in printed
    with pytest.raises(ConfigError, match="unknown model or technique nope"):
        run_matrix(["nope"])
    assert table([Outcome("m", "t", "FAILED", "x" * 50)]).count("...") == 1


def tiny() -> tuple[nn.Module, torch.Tensor]:
    """A model of one's own for ``--model tests.test_matrix:tiny``: a ``(model, example)`` pair."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(4, 8)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h if mask is None else h * mask)


def masked() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """``forward(x, mask=None)`` given ``(x, mask)``: its calibration must not read the pair as (inputs, labels)."""
    torch.manual_seed(0)
    return _Masked().eval(), (torch.randn(4, 8), (torch.rand(4, 16) > 0.3).float())


def test_a_tuple_example_of_ones_own_calibrates_with_all_its_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    """The static int8 cell of (x, mask) calibrated on x alone and the quantized graph then refused the mask."""
    assert main(["--models", "mlp", "--techniques", "int8", "--model", "tests.test_matrix:masked"]) == 0
    assert "2 cells: 2 works, 0 refused, 0 FAILED" in capsys.readouterr().out
