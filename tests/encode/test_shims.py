"""The modules that moved to torchslim.io.tslim still import from their old paths, with every name they had."""

import importlib

import pytest

import torchslim as ts

OLD_NAMES = {
    "torchslim.encode.container": [
        "CODES_SUFFIX", "CODINGS", "FORMAT_VERSION", "MAGIC", "MASK_SUFFIX", "SUFFIX", "LayerRow", "StreamError",
        "TslimFile", "TslimFormatError", "build_from_arch", "encode_model", "layer_table", "load", "parse", "read",
        "save", "_BITS_VIEW", "_DERIVED", "_DIGEST", "_DTYPES", "_MAX_ELEMENTS", "_MAX_HEADER", "_PREFIX", "_Record",
        "_best_record", "_bits_record", "_cluster_codes", "_coding", "_decode", "_decode_quantized", "_dtype_name",
        "_encode_state", "_from_pattern", "_has_support", "_int", "_pattern", "_positions", "_positions_parts",
        "_quantized", "_quantized_weights", "_raw", "_record_from", "_roundtrips", "_same_bits", "_shared", "_sparse",
        "_support",
    ],
    "torchslim.encode.huffman": [
        "MAX_LENGTH", "MAX_SYMBOLS", "HuffmanCode", "HuffmanError", "entropy_bits", "_CHUNK", "_PACKED", "_RUNS",
        "_SEGMENT", "_as_symbols", "_chain", "_check_coded", "_counts", "_package_merge", "_read_varint", "_segment",
        "_slot_table", "_slots", "_varint", "_windows", "_windows_at",
    ],
    "torchslim.encode.streams": [
        "HuffmanCode", "HuffmanError", "StreamError", "best_gap_width", "decode_stream", "encode_stream",
        "fixed_width", "gap_symbols", "pack_fixed", "positions_from_gaps", "stream_bytes", "unpack_fixed",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_modules_export_every_name(module):
    mod = importlib.import_module(module)
    missing = [n for n in OLD_NAMES[module] if not hasattr(mod, n)]
    assert not missing, missing
    assert sorted(set(mod.__all__)) == sorted(mod.__all__)  # no name listed twice


def test_old_names_are_the_new_objects():
    from torchslim.encode import container, huffman, streams
    from torchslim.encode.tslim import save
    from torchslim.io import tslim

    assert container.TslimFormatError is tslim.TslimFormatError is ts.TslimFormatError
    assert issubclass(tslim.TslimFormatError, ts.CheckpointError)
    assert container.parse is tslim.parse and container.load is tslim.load is ts.load
    assert container.save is save is ts.save
    assert huffman.HuffmanCode is tslim.HuffmanCode and streams.StreamError is tslim.streams.StreamError


def test_old_private_helpers_still_work():
    import numpy as np
    import torch

    from torchslim.encode import container

    state = {"w": torch.where(torch.arange(64.0) % 5 == 0, torch.arange(64.0), 0.0), "b": torch.ones(3)}
    records = container._encode_state(state, "fixed")
    assert [r.enc for r in records] == ["sparse", "raw"]
    data = container._PREFIX.pack(container.MAGIC, container.FORMAT_VERSION, 0, 0)
    assert len(data) == 16 and container._int({"k": 2}, "k", 0, 3, "x") == 2
    assert np.array_equal(container._pattern(torch.tensor([1.0])), np.array([0x3F800000], dtype="<i4"))
