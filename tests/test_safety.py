"""Acceptance: no code path unpickles a file."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchslim"


def test_no_pickle_and_torch_load_only_with_weights_only():
    offenders = []
    for path in SRC.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"^\s*(import|from)\s+(pickle|dill|cloudpickle)\b", line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}:{n}: {line.strip()}")
            if re.search(r"allow_pickle\s*=\s*True", line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders
    assert any("weights_only=True" in p.read_text() for p in SRC.rglob("*.py"))
