"""Which codec each state-dict entry gets: the smallest encoding that decodes back to it bit for bit.

- A tensor with a sharing-codes buffer (the constraint registered as
  ``sharing``, ``<param>_codes``) may be ``shared``; one with a pruning mask
  (``mask``, ``<param>_mask``) or with under 75 % non-zeros may be ``sparse``.
  The smallest candidate smaller than ``raw`` that round-trips wins.
- A mask or codes buffer that equals what its parameter's record implies is
  ``support_of`` / ``codes_of`` (no payload); else ``raw``.
- The technique side may *offer* a record for an entry (a quantized weight as
  its integers, :mod:`torchslim.encode.quantized`): it is taken when smaller than
  ``raw`` and it decodes to the tensor the offer names, else the entry is
  encoded like any other.

Every record is checked to decode to its tensor before it is taken, so a file
always loads to the state dict it was written from.

Example:
    >>> model = ts.create_model("lenet300")
    >>> _ = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    >>> records = encode_state(model.state_dict(), "huffman")
    >>> [(r.name, r.enc) for r in records][:3]
    [('fc1.weight', 'sparse'), ('fc1.bias', 'raw'), ('fc1.weight_mask', 'support_of')]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torchslim.graph import constraints
from torchslim.io.tslim.codecs import (
    CODES_OF,
    RAW,
    SHARED,
    SPARSE,
    SUPPORT_OF,
    Decoded,
    decode_record,
    has_support,
)
from torchslim.io.tslim.records import Record, TslimFormatError, pattern, same_bits
from torchslim.io.tslim.streams import StreamError

#: key -> (a record offered for the entry, the tensor it must decode to)
Offers = Mapping[str, tuple[Record, torch.Tensor]]


def _suffixes() -> tuple[str, str]:
    """The buffer suffixes of pruning masks and sharing codes (registered by the techniques that own them)."""
    return constraints.get("mask").suffix, constraints.get("sharing").suffix


def encode_state(state: Mapping[str, torch.Tensor], coding: str, offers: Offers | None = None) -> list[Record]:
    """One verified record per state entry, in state order (``offers``: see the module doc)."""
    mask_suffix, codes_suffix = _suffixes()
    offers = offers or {}
    records: dict[str, Record] = {}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    derived = (mask_suffix, codes_suffix)

    def of(key: str) -> str:
        return key[: -len(mask_suffix)] if key.endswith(mask_suffix) else key[: -len(codes_suffix)]

    later: list[str] = []
    for key, t in tensors.items():
        if key in offers or (key.endswith(derived) and of(key) in tensors):
            later.append(key)
            continue
        records[key] = best_record(key, t, tensors, coding)
    for key in sorted(later, key=lambda k: k.endswith(derived)):  # offered entries first
        t = tensors[key]
        if key in offers:
            candidate, target = offers[key]
            ok = candidate.nbytes < RAW.encode(key, t).nbytes and roundtrips(candidate, target.detach().cpu(), records, tensors)
            records[key] = candidate if ok else best_record(key, t, tensors, coding)
            continue
        source = records.get(of(key))
        found = None
        if source is not None and has_support(source) and list(t.shape) == source.shape:
            if key.endswith(mask_suffix) and t.dtype == torch.bool:
                found = SUPPORT_OF.encode(key, t, of(key))
            elif key.endswith(codes_suffix) and source.enc == "shared" and t.dtype in (torch.int16, torch.int32, torch.int64):
                found = CODES_OF.encode(key, t, of(key))
        records[key] = found if found is not None and roundtrips(found, t, records) else RAW.encode(key, t)
    return [records[k] for k in state]


def best_record(key: str, t: torch.Tensor, tensors: Mapping[str, torch.Tensor], coding: str) -> Record:
    """The smallest encoding of ``t`` that decodes back to it bit for bit (``tensors``: its mask and codes)."""
    mask_suffix, codes_suffix = _suffixes()
    raw = RAW.encode(key, t)
    if t.dtype == torch.bool or t.numel() < 16:
        return raw
    candidates = []
    codes = tensors.get(key + codes_suffix)
    if codes is not None and tuple(codes.shape) == tuple(t.shape) and not codes.is_floating_point():
        candidates.append(SHARED.encode(key, t, codes, coding))
    mask = tensors.get(key + mask_suffix)
    where = mask.flatten().numpy().astype(bool) if mask is not None and mask.shape == t.shape else pattern(t) != 0
    if where.mean() < 0.75:
        candidates.append(SPARSE.encode(key, t, where, coding))
    # a shared parameter stored any other way leaves its codes buffer to be stored raw: count that in
    codes_cost = 0 if codes is None else codes.numel() * codes.element_size()

    def cost(r: Record) -> int:
        return r.nbytes + (0 if r.enc == "shared" else codes_cost)

    for record in sorted(candidates, key=cost):
        if cost(record) < cost(raw) and roundtrips(record, t, {}):
            return record
    return raw


def roundtrips(
    record: Record, t: torch.Tensor, records: Mapping[str, Record], tensors: Mapping[str, torch.Tensor] | None = None
) -> bool:
    """Whether ``record`` decodes to ``t`` bit for bit (``records``/``tensors``: what it may derive from)."""
    tensors = tensors or {}
    done: Decoded = {k: (r, tensors.get(k, torch.empty(0))) for k, r in records.items()}
    for r, _ in done.values():
        r.info["_payload"] = dict(r.parts)
    try:
        return same_bits(decode_record(record, dict(record.parts), done), t)
    except (TslimFormatError, StreamError):
        return False
    finally:
        for r, _ in done.values():
            r.info.pop("_payload", None)

