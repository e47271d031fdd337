"""The codec registry: lookup by a record's enc, errors listing the known codecs, each codec round trips."""

import numpy as np
import pytest
import torch

from torchslim.io.tslim import codecs
from torchslim.io.tslim.codecs import CODECS, Codec, codec_of, decode_record, has_support, is_derived, register
from torchslim.io.tslim.records import Record, TslimFormatError, same_bits


def test_an_unknown_enc_is_an_error_listing_the_known_codecs():
    with pytest.raises(TslimFormatError, match=r"record w: unknown encoding 'zip'; known: bits, codes_of, .*sparse, support_of"):
        codec_of(Record("w", [2], "float32", "zip"))
    assert not is_derived(Record("w", [2], "float32", "zip")) and not has_support(Record("w", [2], "float32", "zip"))


def test_built_in_codecs_are_registered_by_name():
    for name in ("raw", "bits", "sparse", "shared", "support_of", "codes_of"):
        assert CODECS.get(name).name == name
    assert [n for n in CODECS.names() if CODECS.get(n).derived] == ["codes_of", "quantized", "support_of"]


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register(Codec("raw", codecs.raw_record, codecs._decode_raw))


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_each_codec_round_trips_bit_for_bit(coding):
    g = torch.Generator().manual_seed(0)
    t = torch.where(torch.rand(40, 30, generator=g) < 0.2, torch.randn(40, 30, generator=g), 0.0)
    t[0, 0], t[0, 1] = -0.0, float("nan")
    where = codecs.pattern(t) != 0
    cases = [codecs.RAW.encode("w", t), codecs.SPARSE.encode("w", t, where, coding)]
    codes = torch.full(t.shape, -1, dtype=torch.int16)
    codes[t != 0] = (t[t != 0] > 0).to(torch.int16)
    shared_t = torch.where(codes >= 0, torch.where(codes == 1, 0.5, -0.25), 0.0)
    shared = codecs.SHARED.encode("w", shared_t, codes, coding)
    for record in cases:
        assert same_bits(decode_record(record, dict(record.parts), {}), t)
    assert same_bits(decode_record(shared, dict(shared.parts), {}), shared_t)
    mask = torch.rand(7, 5, generator=g) < 0.5
    bits = codecs.BITS.encode("m", mask)
    assert bits.enc == "bits" and torch.equal(decode_record(bits, dict(bits.parts), {}), mask)
    shared.info["_payload"] = dict(shared.parts)
    done = {"w": (shared, shared_t)}
    support = codecs.SUPPORT_OF.encode("w_mask", codes >= 0, "w")
    assert torch.equal(decode_record(support, {}, done), codes >= 0)
    derived_codes = codecs.CODES_OF.encode("w_codes", codes, "w")
    assert torch.equal(decode_record(derived_codes, {}, done), codes)


def test_malformed_payloads_name_the_record():
    t = torch.arange(6, dtype=torch.float32)
    record = codecs.RAW.encode("fc.bias", t)
    with pytest.raises(TslimFormatError, match="record fc.bias: 20 bytes of data for 6 float32 elements"):
        decode_record(record, {"data": dict(record.parts)["data"][:-4]}, {})
    sparse = codecs.SPARSE.encode("fc.weight", t, np.ones(6, dtype=bool), "fixed")
    sparse.info["nnz"] = 5
    with pytest.raises(TslimFormatError, match="record fc.weight: 6 positions decoded, header says 5"):
        decode_record(sparse, dict(sparse.parts), {})


@pytest.mark.parametrize("coding", ["huffman", "fixed"])
def test_a_dense_shared_tensor_stores_no_relative_indices_and_round_trips(coding):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (64, 72), generator=g, dtype=torch.int16)
    t = torch.tensor([-0.5, -0.1, 0.2, 0.7])[codes.long()]
    record = codecs.shared_record("w", t, codes, coding)
    assert record.info["all"] == 1 and "n_gap" not in record.info
    assert not [n for n, _ in record.parts if n.startswith("gap_")]
    assert same_bits(decode_record(record, dict(record.parts), {}), t)
    # one pruned weight: the relative indices come back, and cost at least a bit per entry with Huffman
    sparse_codes = codes.clone()
    sparse_codes[0, 0] = -1
    pruned = torch.where(sparse_codes >= 0, t, torch.zeros(()))  # +0.0 where pruned
    sparse = codecs.shared_record("w", pruned, sparse_codes, coding)
    assert "all" not in sparse.info and sparse.info["nnz"] == t.numel() - 1
    gap_bytes = sum(len(v) for n, v in sparse.parts if n.startswith("gap_"))
    assert gap_bytes >= (t.numel() - 1) // 8
    assert same_bits(decode_record(sparse, dict(sparse.parts), {}), pruned)


def test_all_positions_must_match_the_element_count():
    codes = torch.zeros(4, 4, dtype=torch.int16)
    record = codecs.shared_record("w", torch.zeros(4, 4), codes, "huffman")
    record.info["nnz"] = 15
    with pytest.raises(TslimFormatError, match="nnz"):
        decode_record(record, dict(record.parts), {})
