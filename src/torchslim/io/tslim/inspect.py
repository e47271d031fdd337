"""What ``torchslim inspect`` prints: per-module rows of a ``.tslim`` file, as in the Deep Compression tables.

Example:
    >>> import tempfile
    >>> from torchslim.io.tslim.format import read
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = ts.save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim")
    >>> [(row.layer, row.encoding, row.weight_bits) for row in layer_table(read(path))]
    [('fc1', 'raw', 32), ('fc2', 'raw', 32), ('fc3', 'raw', 32)]
    >>> tmp.cleanup()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torchslim.io.tslim.format import TslimFile
from torchslim.io.tslim.records import DTYPES

#: encodings that store positions and count ``nnz`` entries (relative indices in ``gap_*`` parts)
_POSITIONAL = ("sparse", "shared", "quantized")


@dataclass(frozen=True)
class LayerRow:
    """One line of :func:`layer_table`: a module's tensors in the file, as in the Deep Compression tables."""

    layer: str
    weights: int
    kept: float
    weight_bits: float
    index_bits: float
    encoding: str
    bytes: int
    dense_bytes: int

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else float("inf")


def _modules(f: TslimFile) -> dict[str, dict[str, Any]]:
    """Per module: its records' payload bytes, its floating tensors at 4 bytes an element, its weight's entry."""
    rows: dict[str, dict[str, Any]] = {}
    for entry in f.records:
        name = entry["name"]
        module, _, tensor = name.rpartition(".")
        for fq in (".weight_fq", ".input_fq"):  # a quantized layer's scales count towards the layer
            module = module.removesuffix(fq)
        row = rows.setdefault(module or "<model>", {"bytes": 0, "dense": 0, "weight": None})
        parts = {p: n for p, n in entry["parts"]}
        row["bytes"] += sum(parts.values())
        if entry["dtype"].startswith(("float", "bfloat")) and entry["enc"] not in ("support_of", "codes_of"):
            row["dense"] += 4 * math.prod(entry["shape"])
        if tensor == "weight":
            row["weight"] = (entry, parts)
    return rows


def layer_table(f: TslimFile) -> list[LayerRow]:
    """Per-module rows: weights kept, bits per kept weight (values/codes, indices), bytes, ratio to fp32.

    ``weight_bits`` counts the codebook, Huffman tables and codes (or the raw
    values) per kept weight of the module's ``weight``; ``index_bits`` the
    relative indices. ``bytes`` is every record of the module; ``dense_bytes``
    its floating tensors at 4 bytes per element.

    Example:
        >>> import tempfile
        >>> from torchslim.io.tslim.format import read
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = torch.manual_seed(0)
        >>> model = ts.create_model("lenet300")
        >>> report = ts.share_weights_(model, {"bits": 5})
        >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> for row in layer_table(read(path)):
        ...     print(row.layer, row.encoding, f"{row.weight_bits:.0f} bits/weight", row.ratio > 4)
        fc1 shared 5 bits/weight True
        fc2 shared 5 bits/weight True
        fc3 shared 6 bits/weight True
        >>> tmp.cleanup()
    """
    out = []
    for module, row in _modules(f).items():
        weights, kept, wbits, ibits, enc = 0, 1.0, 0.0, 0.0, "-"
        if row["weight"] is not None:
            entry, parts = row["weight"]
            weights = math.prod(entry["shape"])
            enc = entry["enc"]
            if enc == "quantized" and not entry.get("sparse"):
                kept = float(f.state[entry["name"]].count_nonzero()) / max(1, weights)
                wbits = 8 * sum(parts.values()) / max(1, weights)
            elif enc in _POSITIONAL:
                nnz = max(1, entry["nnz"])
                kept = entry["nnz"] / max(1, weights)
                index = sum(n for p, n in parts.items() if p.startswith("gap_"))
                ibits = 8 * index / nnz
                wbits = 8 * (sum(parts.values()) - index) / nnz
            else:
                kept = float(f.state[entry["name"]].count_nonzero()) / max(1, weights)
                wbits = 8 * DTYPES[entry["dtype"]][1].itemsize
        out.append(LayerRow(module, weights, kept, wbits, ibits, enc, row["bytes"], row["dense"]))
    return out
