import doctest
import heapq
import math
import time

import numpy as np
import pytest

from torchslim.errors import TorchslimError
from torchslim.io.tslim import huffman, huffman_windows
from torchslim.io.tslim.huffman import MAX_LENGTH, HuffmanCode, HuffmanError, entropy_bits

# ----------------------------------------------------------------------------- references and helpers


def huffman_cost(counts):
    """Total bits of an optimal (unlimited) Huffman code: the sum of the weights of the internal nodes."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def reference_package_merge(counts, limit):
    """Textbook package-merge, every package carrying its symbols: optimal lengths of at most `limit` bits."""
    leaves = sorted((int(c), (i,)) for i, c in enumerate(counts) if c > 0)
    current = list(leaves)
    for _ in range(limit - 1):
        packages = [
            (current[k][0] + current[k + 1][0], current[k][1] + current[k + 1][1])
            for k in range(0, len(current) - 1, 2)
        ]
        current = sorted(leaves + packages, key=lambda item: item[0])
    lengths = [0] * len(counts)
    for _, symbols in current[: 2 * len(leaves) - 2]:
        for s in symbols:
            lengths[s] += 1
    return lengths


def cost(code, counts):
    return int((code.lengths.astype(np.int64) * np.asarray(counts, dtype=np.int64)).sum())


def kraft(code):
    lens = code.lengths[code.lengths > 0].astype(np.int64)
    return sum(2 ** (MAX_LENGTH - int(n)) for n in lens) / 2**MAX_LENGTH


def assert_prefix_free(code):
    lens = code.lengths.astype(np.int64)
    codes = code.codes().astype(np.int64)
    present = np.flatnonzero(lens)
    a_len, b_len = lens[present][:, None], lens[present][None, :]
    a_code, b_code = codes[present][:, None], codes[present][None, :]
    shorter = (a_len <= b_len) & ~np.eye(present.size, dtype=bool)
    prefix = (b_code >> np.maximum(b_len - a_len, 0)) == a_code
    assert not (shorter & prefix).any()
    assert (codes[present] < (1 << lens[present])).all()


def fibonacci(n):
    out = [1, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return np.array(out[:n], dtype=np.int64)


def random_stream(rng, size=None, n_symbols=None):
    """A random test stream: (symbols, n_symbols), from one of several distributions."""
    if n_symbols is None:
        n_symbols = int(rng.choice([1, 2, 3, 5, 16, 64, 256, 1000, 4096, int(rng.integers(1, 4097))]))
    if size is None:
        size = int(rng.integers(0, 200_001)) if rng.random() < 0.05 else int(rng.integers(0, 3000))
    kind = rng.choice(["uniform", "geometric", "zipf", "single", "few"])
    if kind == "uniform":
        sym = rng.integers(0, n_symbols, size)
    elif kind == "geometric":
        sym = np.minimum(rng.geometric(rng.uniform(0.01, 0.9), size) - 1, n_symbols - 1)
    elif kind == "zipf":
        sym = np.minimum(rng.zipf(rng.uniform(1.1, 3.0), size) - 1, n_symbols - 1)
    elif kind == "single":
        sym = np.full(size, rng.integers(0, n_symbols))
    else:
        sym = rng.choice(rng.integers(0, n_symbols, 3), size)
    if rng.random() < 0.5:  # relabel, so the frequent symbols are not always the small ones
        sym = rng.permutation(n_symbols)[sym]
    return sym.astype(rng.choice([np.int64, np.int32, np.uint16]) if n_symbols <= 65535 else np.int64), n_symbols


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("seed", range(200))
def test_encode_decode_identity(seed):
    rng = np.random.default_rng(seed)
    sym, n_symbols = random_stream(rng)
    max_length = int(rng.choice([24, MAX_LENGTH, max(1, math.ceil(math.log2(n_symbols)) + int(rng.integers(0, 4)))]))
    code = HuffmanCode.from_symbols(sym, n_symbols, max_length=max_length)
    assert code.n_symbols == n_symbols
    assert code.lengths.max(initial=0) <= max_length
    payload = code.encode(sym)
    assert 8 * len(payload) - 7 <= code.encoded_bits(sym) <= 8 * len(payload)
    out = code.decode(payload, sym.size)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, sym)
    # trailing bytes are ignored; a shorter count gives the prefix
    np.testing.assert_array_equal(code.decode(payload + b"\xff\x00\xaa", sym.size), sym)
    head = int(rng.integers(0, sym.size + 1))
    np.testing.assert_array_equal(code.decode(payload, head), sym[:head])
    # the table travels too
    table = code.to_bytes()
    again, used = HuffmanCode.from_bytes(table + b"\x07payload")
    assert used == len(table) and again == code
    np.testing.assert_array_equal(again.decode(payload, sym.size), sym)


def test_single_symbol_streams():
    for n_symbols, s, size in [(1, 0, 1), (1, 0, 1000), (7, 3, 5), (4096, 4095, 12345)]:
        sym = np.full(size, s)
        code = HuffmanCode.from_symbols(sym, n_symbols)
        assert code.lengths[s] == 1 and code.lengths.sum() == 1
        payload = code.encode(sym)
        assert payload == bytes((size + 7) // 8)  # the code is a single 0 bit
        np.testing.assert_array_equal(code.decode(payload, size), sym)
    code = HuffmanCode.from_symbols(np.zeros(3, dtype=np.int64), 2)
    with pytest.raises(HuffmanError, match="invalid code"):
        code.decode(b"\x20", 3)  # 0 0 1: the third bit is no code


def test_empty_streams_and_codes():
    code = HuffmanCode.from_counts(np.zeros(5, dtype=np.int64))
    assert code.lengths.tolist() == [0] * 5 and code.n_symbols == 5
    assert code.encode(np.array([], dtype=np.int64)) == b""
    assert code.decode(b"", 0).shape == (0,)
    with pytest.raises(HuffmanError, match="empty code"):
        code.decode(b"\x00", 1)
    with pytest.raises(HuffmanError, match="no code"):
        code.encode(np.array([1]))
    empty = HuffmanCode.from_counts(np.zeros(0))
    assert empty.n_symbols == 0 and HuffmanCode.from_bytes(empty.to_bytes())[0] == empty
    assert entropy_bits(np.array([], dtype=np.int64), 4) == 0.0


def test_small_known_code():
    code = HuffmanCode(np.array([1, 2, 3, 3], dtype=np.uint8))
    assert [format(int(c), f"0{n}b") for c, n in zip(code.codes(), code.lengths)] == ["0", "10", "110", "111"]
    sym = np.array([0, 3, 1, 2, 2, 0])  # 0 111 10 110 110 0 -> 0111 1011 0110 0(000)
    assert code.encode(sym) == bytes([0b01111011, 0b01100000])
    assert code.encoded_bits(sym) == 13
    np.testing.assert_array_equal(code.decode(bytes([0b01111011, 0b01100000]), 6), sym)


def test_docstring_examples():
    result = doctest.testmod(huffman, extraglobs={"np": np})
    assert result.attempted > 10 and result.failed == 0
    result = doctest.testmod(huffman_windows, extraglobs={"np": np})
    assert result.attempted >= 1 and result.failed == 0


# ----------------------------------------------------------------------------- optimality and code structure


def test_lengths_are_optimal():
    rng = np.random.default_rng(1)
    for _ in range(150):
        n = int(rng.integers(1, 40))
        counts = rng.integers(0, 1000, n) * (rng.random(n) < 0.8)
        counts = counts ** rng.integers(1, 4)  # skew some of them
        code = HuffmanCode.from_counts(counts)
        present = np.count_nonzero(counts)
        if present:
            assert cost(code, counts) == huffman_cost(counts)
        assert ((code.lengths > 0) == (counts > 0)).all()
        if present >= 2:
            assert kraft(code) == 1.0
        assert_prefix_free(code)


def test_length_limited_matches_reference_package_merge():
    rng = np.random.default_rng(2)
    for _ in range(60):
        n = int(rng.integers(2, 30))
        counts = rng.integers(1, 1 << int(rng.integers(1, 20)), n)
        limit = int(rng.integers(math.ceil(math.log2(n)), n))
        code = HuffmanCode.from_counts(counts, max_length=limit)
        assert code.lengths.max() <= limit and kraft(code) == 1.0
        assert cost(code, counts) == cost(HuffmanCode(np.array(reference_package_merge(counts, limit))), counts)
        # monotone: a more frequent symbol never gets a longer code
        order = np.argsort(counts, kind="stable")
        assert (np.diff(code.lengths[order].astype(int)) <= 0).all()


@pytest.mark.parametrize("limit", [12, 16, 24, MAX_LENGTH])
def test_length_limit_on_fibonacci_counts(limit):
    counts = fibonacci(40)  # an unlimited Huffman code would be 39 bits deep
    unlimited_depth = 39
    code = HuffmanCode.from_counts(counts, max_length=limit)
    assert code.lengths.max() == limit < unlimited_depth
    assert kraft(code) == 1.0
    assert_prefix_free(code)
    assert cost(code, counts) > huffman_cost(counts)
    assert cost(code, counts) == cost(HuffmanCode(np.array(reference_package_merge(counts, limit))), counts)
    sym = np.repeat(np.arange(40), np.minimum(counts, 500))
    payload = code.encode(sym)
    np.testing.assert_array_equal(code.decode(payload, sym.size), sym)


def test_full_alphabet_and_longest_codes_decode():
    counts = fibonacci(45)  # limited to 32 bits: the longest codes the format allows
    code = HuffmanCode.from_counts(counts, max_length=MAX_LENGTH)
    assert code.lengths.max() == MAX_LENGTH
    sym = np.random.default_rng(3).permutation(np.repeat(np.arange(45), 20))
    np.testing.assert_array_equal(code.decode(code.encode(sym), sym.size), sym)
    wide = HuffmanCode.from_counts(np.ones(4096, dtype=np.int64))
    assert (wide.lengths == 12).all()
    assert HuffmanCode.from_counts(np.ones(5), max_length=3).lengths.max() == 3


def test_canonical_order():
    rng = np.random.default_rng(4)
    counts = rng.zipf(1.5, 300).clip(max=10_000) * (rng.random(300) < 0.7)
    code = HuffmanCode.from_counts(counts)
    lens, codes = code.lengths.astype(np.int64), code.codes().astype(np.int64)
    present = np.flatnonzero(lens)
    order = present[np.lexsort((present, lens[present]))]
    justified = codes[order] << (lens.max() - lens[order])
    assert (np.diff(justified) > 0).all() and justified[0] == 0
    assert_prefix_free(code)
    assert (codes[lens == 0] == 0).all()


# ----------------------------------------------------------------------------- size against the entropy


@pytest.mark.parametrize(
    "name",
    ["geometric0.1-64", "geometric0.2-256", "zipf1.3-1024", "gaps-256"],
)
def test_payload_close_to_entropy(name):
    rng = np.random.default_rng(5)
    n = 200_000
    if name == "geometric0.1-64":
        sym, n_symbols = np.minimum(rng.geometric(0.1, n) - 1, 63), 64
    elif name == "geometric0.2-256":
        sym, n_symbols = np.minimum(rng.geometric(0.2, n) - 1, 255), 256
    elif name == "zipf1.3-1024":
        sym, n_symbols = np.minimum(rng.zipf(1.3, n) - 1, 1023), 1024
    else:  # sparse-index gaps of a 90 %-sparse layer, as Deep Compression stores them
        sym, n_symbols = np.minimum(rng.geometric(0.1, n) - 1, 255), 256
    entropy = entropy_bits(sym, n_symbols)
    assert entropy / n >= 2.0  # Huffman is near-optimal only when symbols carry a few bits each
    code = HuffmanCode.from_symbols(sym, n_symbols)
    payload, table = code.encode(sym), code.to_bytes()
    assert code.encoded_bits(sym) >= entropy - 1e-6 * n  # no prefix code beats the entropy
    assert 8 * len(payload) + 8 * len(table) <= 1.01 * entropy + 8 * len(table) + 8
    assert len(table) <= 2 * n_symbols  # the table stays small next to the payload


def test_entropy_bits():
    assert entropy_bits(np.array([0, 1, 0, 1]), 2) == pytest.approx(4.0)
    assert entropy_bits(np.array([3, 3, 3]), 4) == 0.0
    sym = np.arange(1024) % 8
    assert entropy_bits(sym, 8) == pytest.approx(3 * 1024)
    with pytest.raises(HuffmanError, match="out of range"):
        entropy_bits(np.array([0, 8]), 8)


# ----------------------------------------------------------------------------- table serialisation


def test_table_round_trip_and_compactness():
    rng = np.random.default_rng(6)
    for n_symbols in [1, 2, 16, 256, 4096, 65536]:
        for density in [1.0, 0.3, 0.001]:
            counts = rng.zipf(1.4, n_symbols).clip(max=1 << 20) * (rng.random(n_symbols) < density)
            code = HuffmanCode.from_counts(counts)
            table = code.to_bytes()
            assert HuffmanCode.from_bytes(table) == (code, len(table))
            assert len(table) <= 6 + (n_symbols * 5 + 7) // 8 + 1
    # a sparse alphabet is stored as runs: a handful of bytes, not 65536 five-bit fields
    counts = np.zeros(65536, dtype=np.int64)
    counts[[3, 70, 9000]] = [5, 2, 1]
    assert len(HuffmanCode.from_counts(counts).to_bytes()) < 32


def test_from_bytes_rejects_malformed_tables():
    code = HuffmanCode.from_counts(np.random.default_rng(7).zipf(1.5, 200).clip(max=1000))
    table = code.to_bytes()
    for cut in range(len(table)):
        with pytest.raises(HuffmanError, match="truncated"):
            HuffmanCode.from_bytes(table[:cut])
    bad = {
        "unknown mode": b"\x04\x09",
        "bit width": b"\x04\x00\x07\x00\x00\x00\x00",
        "at most 32": b"\x02\x00\x06\x84\x00",  # lengths 33 and 1
        "incomplete": b"\x02\x00\x02\x90",  # lengths 2 and 1
        "over-full": b"\x03\x00\x02\x54",  # lengths 1, 1, 1
        "runs cover": b"\x03\x01\x01\x01\x00",  # one run of one symbol, three declared
        "more than it can hold": b"\x03\x01\x05\x01\x00",
        "over-long varint": b"\xff" * 12,
        "supported": b"\xff\xff\xff\xff\x0f\x00\x00",
    }
    for message, data in bad.items():
        with pytest.raises(HuffmanError, match=message):
            HuffmanCode.from_bytes(data)


def test_from_bytes_fuzz():
    rng = np.random.default_rng(8)
    code = HuffmanCode.from_counts(rng.geometric(0.05, 300))
    tables = [code.to_bytes(), HuffmanCode.from_counts(np.eye(1, 5000, 77)[0]).to_bytes()]
    for i in range(400):
        data = bytearray(tables[i % 2])
        how = i % 4
        if how == 0:
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes())
        elif how == 1:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        elif how == 2:
            data = data[: int(rng.integers(0, len(data)))] + rng.bytes(int(rng.integers(0, 5)))
        else:
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            parsed, used = HuffmanCode.from_bytes(bytes(data))
        except HuffmanError:
            continue
        assert 0 < used <= len(data)
        assert parsed.lengths.max(initial=0) <= MAX_LENGTH
        if np.count_nonzero(parsed.lengths) >= 2:
            assert kraft(parsed) == 1.0


# ----------------------------------------------------------------------------- corrupt payloads


def test_decode_errors():
    rng = np.random.default_rng(9)
    sym = np.minimum(rng.geometric(0.2, 1000) - 1, 31)
    code = HuffmanCode.from_symbols(sym, 32)
    payload = code.encode(sym)
    with pytest.raises(HuffmanError, match=">= 0"):
        code.decode(payload, -1)
    with pytest.raises(HuffmanError, match="too short"):
        code.decode(payload[:-1], sym.size)
    with pytest.raises(HuffmanError, match="too short"):
        code.decode(payload, 10**12)
    with pytest.raises(HuffmanError, match="too short"):
        code.decode(b"", 1)
    with pytest.raises(HuffmanError, match="out of range"):
        code.encode(np.array([0, 32]))
    with pytest.raises(HuffmanError, match="out of range"):
        code.encode(np.array([-1]))
    with pytest.raises(HuffmanError, match="integers"):
        code.encode(np.array([0.5]))
    absent = HuffmanCode.from_counts(np.array([1, 0, 1]))
    with pytest.raises(HuffmanError, match="symbol 1 has no code"):
        absent.encode(np.array([0, 1]))
    with pytest.raises(HuffmanError, match="symbol 1 has no code"):
        absent.encoded_bits(np.array([2, 1]))


def test_decode_fuzz_never_crashes():
    rng = np.random.default_rng(10)
    cases = []
    for n_symbols, p in [(16, 0.3), (256, 0.05), (3, 0.9)]:
        sym = np.minimum(rng.geometric(p, 500) - 1, n_symbols - 1)
        code = HuffmanCode.from_symbols(sym, n_symbols)
        cases.append((code, code.encode(sym), sym.size))
    lone = HuffmanCode.from_counts(np.array([0, 9, 0]))  # incomplete code: a 1 bit is invalid
    cases.append((lone, lone.encode(np.ones(100, dtype=np.int64)), 100))
    errors = 0
    for i in range(400):
        code, payload, count = cases[i % len(cases)]
        data = bytearray(payload)
        how = int(rng.integers(0, 5))
        if how == 0:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        elif how == 1:
            data = data[: int(rng.integers(0, len(data)))]
        elif how == 2:
            data = bytearray(rng.bytes(int(rng.integers(0, 2 * len(data)))))
        elif how == 3:
            count = int(rng.integers(0, 3 * count))
        else:
            data = data[: int(rng.integers(0, len(data)))] + rng.bytes(int(rng.integers(0, 20)))
            count += int(rng.integers(-5, 6))
        try:
            out = code.decode(bytes(data), count)
        except HuffmanError:
            errors += 1
            continue
        assert out.dtype == np.int64 and out.shape == (count,)
        assert (code.lengths[out] > 0).all()
    assert errors > 50  # corruption is noticed, not just absorbed


# ----------------------------------------------------------------------------- construction errors


def test_construction_errors():
    with pytest.raises(HuffmanError, match="incomplete"):
        HuffmanCode(np.array([1, 2]))
    with pytest.raises(HuffmanError, match="over-full"):
        HuffmanCode(np.array([1, 1, 1]))
    with pytest.raises(HuffmanError, match="0..32"):
        HuffmanCode(np.array([33, 1]))
    with pytest.raises(HuffmanError, match="1-D"):
        HuffmanCode(np.ones((2, 2), dtype=np.uint8))
    with pytest.raises(HuffmanError, match="max_length"):
        HuffmanCode.from_counts(np.ones(4), max_length=0)
    with pytest.raises(HuffmanError, match="max_length"):
        HuffmanCode.from_counts(np.ones(4), max_length=MAX_LENGTH + 1)
    with pytest.raises(HuffmanError, match="at most 2 bits"):
        HuffmanCode.from_counts(np.ones(5), max_length=2)
    with pytest.raises(HuffmanError, match="non-negative"):
        HuffmanCode.from_counts(np.array([1, -1, 2]))
    with pytest.raises(HuffmanError, match="out of range"):
        HuffmanCode.from_symbols(np.array([0, 5]), n_symbols=5)
    assert issubclass(HuffmanError, TorchslimError)
    code = HuffmanCode.from_counts(np.array([2.5, 0.5, 1.0]))  # float counts are weights too
    assert code.lengths.tolist() == [1, 2, 2]
    assert hash(code) == hash(HuffmanCode(np.array([1, 2, 2]))) and code != "not a code"
    assert not code.lengths.flags.writeable


# ----------------------------------------------------------------------------- speed


def test_million_symbols_fast():
    rng = np.random.default_rng(11)
    sym = np.minimum(rng.geometric(0.1, 1_000_000) - 1, 63)
    code = HuffmanCode.from_symbols(sym, 64)
    code.decode(code.encode(sym[:1000]), 1000)  # warm up
    start = time.perf_counter()
    payload = code.encode(sym)
    out = code.decode(payload, sym.size)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(out, sym)
    assert elapsed < 2.0, f"encode + decode of 1e6 symbols took {elapsed:.2f} s"


def test_small_chunks_and_segments(monkeypatch):
    """Tiny chunks and segments: many of them, codes straddling every boundary; same bytes, same symbols."""
    rng = np.random.default_rng(12)
    cases = []
    for n_symbols, p in [(64, 0.1), (4096, 0.002), (3, 0.7)]:
        sym = np.minimum(rng.geometric(p, 3000) - 1, n_symbols - 1)
        code = HuffmanCode.from_symbols(sym, n_symbols)
        cases.append((code, sym, code.encode(sym)))
    long_code = HuffmanCode.from_counts(fibonacci(45), max_length=MAX_LENGTH)  # codes longer than a segment
    long_sym = rng.permutation(np.repeat(np.arange(45), 30))
    cases.append((long_code, long_sym, long_code.encode(long_sym)))
    monkeypatch.setattr(huffman, "_CHUNK", 16)  # symbols encoded per pass
    monkeypatch.setattr(huffman_windows, "_CHUNK", 16)  # bit positions read per pass
    monkeypatch.setattr(huffman, "_SEGMENT", 40)
    for code, sym, payload in cases:
        assert code.encode(sym) == payload
        np.testing.assert_array_equal(code.decode(payload, sym.size), sym)
        np.testing.assert_array_equal(code.decode(payload, 777), sym[:777])
        with pytest.raises(HuffmanError, match="too short"):
            code.decode(payload[: len(payload) // 2], sym.size)
    lone = HuffmanCode.from_counts(np.array([0, 5]))
    with pytest.raises(HuffmanError, match=r"invalid code at bit 203 \(symbol 203\)"):
        lone.decode(bytes(25) + b"\x10", 205)  # 203 zero bits, then a 1
