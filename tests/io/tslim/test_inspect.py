"""The per-layer table of a .tslim file and the `torchslim inspect` command that prints it."""

import json

import pytest
from typer.testing import CliRunner

import torchslim as ts
from torchslim.cli import app
from torchslim.encode.tslim import encode_model
from torchslim.io.tslim.format import parse
from torchslim.io.tslim.inspect import layer_table


def test_a_90_percent_sparse_shared_lenet300_is_over_30x_smaller(compressed_lenet300):
    model = compressed_lenet300(0.9, 5)
    data = encode_model(model, arch="zoo:lenet300")
    assert 266_610 * 4 / len(data) > 30, len(data)
    rows = {r.layer: r for r in layer_table(parse(data))}
    assert rows["fc1"].encoding == "shared" and 0.05 < rows["fc1"].kept < 0.15
    assert rows["fc1"].weight_bits < 5.5 and rows["fc1"].index_bits < 8  # Huffman-coded codes and gaps


def test_cli_inspect_prints_the_paper_table(tmp_path, compressed_lenet300):
    model = compressed_lenet300()
    path = ts.save(model, tmp_path / "m.tslim", arch="zoo:lenet300")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["file_bytes"] == path.stat().st_size
    assert out["ratio"] == pytest.approx(266_610 * 4 / path.stat().st_size)
    assert [r["layer"] for r in out["layers"]] == ["fc1", "fc2", "fc3"]
    table = runner.invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0 and "fc1" in table.output and "shared" in table.output
    path.write_bytes(path.read_bytes()[:-1])
    bad = runner.invoke(app, ["inspect", str(path)])
    assert bad.exit_code == 2 and "checksum" in bad.output
