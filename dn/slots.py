"""The slot hash of a primary key, computed in bulk: ``crc32(msgpack(key)) % n``.

Routing (``coordinator/client/routing.py``) sends a key to the shard of its slot, and a shard
that gives slots away filters its rows by slot; both need this hash, and ``dn`` may not import
the coordinator, so it lives here. A key is the primary key as the engine normalizes it
(:meth:`dn.schema.TableDef.check_key`), packed as :func:`dn.objects.codec.pack` packs it.

Two ways to compute the same hash. :func:`slots_py` packs each key and calls ``zlib.crc32``;
it serves every key type. :func:`int64_slots` hashes ints in int64 range with numpy, all keys
at once, bit-identical (tests compare both paths on every encoding boundary). msgpack encodes
an int
``v`` in one of ten forms, by range (positive ints always take the unsigned forms)::

    0 .. 127                  v                          positive fixint
    128 .. 255                cc, v as u8
    256 .. 65535              cd, v as u16 (payloads are big-endian)
    65536 .. 2**32-1          ce, v as u32
    2**32 .. 2**63-1          cf, v as u64
    -32 .. -1                 v & 0xff                   negative fixint
    -128 .. -33               d0, v as i8
    -32768 .. -129            d1, v as i16
    -2**31 .. -32769          d2, v as i32
    -2**63 .. -2**31-1        d3, v as i64

CRC-32 is affine over GF(2): a byte ``b`` followed by ``k`` bytes adds
``T[k][b] = crc32(b + 0*k) ^ crc32(0*(k+1))`` to the CRC of all zeros of the message's
length, whatever comes before it. A key's payload is the low ``p`` bytes of ``v``, its last
byte ``v``'s byte 0, so ``crc = crc32(header + 0*p) ^ XOR(T[k][byte k of v] for k < p)``. The
bytes ``k >= p`` of ``v``'s 8-byte two's complement are all 0x00 (``T[k][0] == 0``) or, for
a negative ``v``, all 0xff, a constant share; so with one constant per form,
``crc = K[form] ^ XOR(T[k][byte k of v] for k < 8)``: the same lookups for every key,
whatever its length. They go two bytes at a time, in four tables of 65,536 entries built from
``T`` on first use (uint32, 1 MiB; or only their low bytes, 256 KiB, for a power-of-two modulus
up to 256, whose result is the CRC's low bits).

Pure functions; any thread.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache
from typing import Any

import msgpack
import numpy as np

#: The ten msgpack forms of an int (see the module docstring): the lowest value of each, in
#: order, its header bytes and its payload length.
INT_FORMS: tuple[tuple[int, bytes, int], ...] = (
    (-(2**63), b"\xd3", 8),
    (-(2**31), b"\xd2", 4),
    (-32768, b"\xd1", 2),
    (-128, b"\xd0", 1),
    (-32, b"", 1),
    (0, b"", 1),
    (128, b"\xcc", 1),
    (256, b"\xcd", 2),
    (65536, b"\xce", 4),
    (2**32, b"\xcf", 8),
)


def slots_py(keys: list, n: int) -> list[int]:
    """``crc32(msgpack(key)) % n`` of each key, one at a time: any key type."""
    crc = zlib.crc32
    pk = msgpack.Packer(use_bin_type=True).pack  # same bytes as dn.objects.codec.pack, reused
    return [crc(pk(k)) % n for k in keys]


def key_slots(keys: list, mod: int, int64: bool = False) -> list[int]:
    """``crc32(msgpack(key)) % mod`` of each normalized key (``int64``: all are ints in int64
    range, hashed with numpy when there are many)."""
    if int64 and len(keys) >= 64:
        got = int64_slots(keys, mod)
        if got is not None:
            return got.tolist()
    return slots_py(keys, mod)


def arrow_slots(columns: list, mod: int) -> Any:
    """The slots of the keys in Arrow key ``columns`` (one per key column, as stored), as a
    numpy array: numpy for one int64 column, else each key as Python (a tuple for several
    columns, msgpack packs it as the list the engine keys by)."""
    import pyarrow as pa

    if len(columns) == 1 and pa.types.is_int64(columns[0].type) and columns[0].null_count == 0:
        got = int64_slots(columns[0].to_numpy(), mod)
        if got is not None:
            return got
    if len(columns) == 1:
        keys = columns[0].to_pylist()
    else:
        keys = list(zip(*(c.to_pylist() for c in columns)))
    return np.array(slots_py(keys, mod), dtype=np.int64)


def pack_set(slots: Any) -> list[list[int]]:
    """A set of slots as its runs ``[[first, last], ...]``, ascending (how slot sets are
    stored)."""
    out: list[list[int]] = []
    for s in sorted(slots):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def unpack_set(runs: Any) -> frozenset[int]:
    """The slots of :func:`pack_set`'s runs (ValueError when malformed)."""
    out: set[int] = set()
    for lo, hi in runs:
        if type(lo) is not int or type(hi) is not int or not 0 <= lo <= hi:
            raise ValueError(f"slot run {[lo, hi]!r} is malformed")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def int64_slots(keys: list, mod: int) -> Any:
    """``crc32(msgpack(key)) % mod`` of each key (ints in int64 range) as a numpy array of 8- or
    16-bit unsigned ints, or None when ``mod`` is over 65,536."""
    low_byte = mod <= 256 and mod & (mod - 1) == 0  # the result is the CRC's low bits
    if mod > 1 << 16:
        return None
    lows, forms, by_chunk = _tables(low_byte)
    n = len(keys)
    if isinstance(keys, np.ndarray):
        v = keys.astype("<i8", copy=False)
    else:
        v = np.frombuffer(struct.pack(f"<{n}q", *keys), dtype="<i8")  # twice np.array's speed
    crc = forms[lows.searchsorted(v, side="right")]
    chunks = v.view("<u2").reshape(n, 4).T.astype(np.intp, order="C")  # 16 bits, low first
    for table, chunk in zip(by_chunk, chunks):
        crc ^= table[chunk]
    if low_byte:
        crc &= mod - 1
        return crc
    return (crc % mod).astype(np.uint8 if mod <= 256 else np.uint16)


@cache
def _tables(low_byte: bool) -> tuple:
    """The vectorized hash's tables (see the module docstring), built on first use: the
    lowest value of each int form; the forms' constants (after a 0 at index 0:
    ``searchsorted`` counts from 1); the four 16-bit tables. As uint32, or with ``low_byte``
    their low bytes only (all a power-of-two modulus up to 256 needs; 256 KiB, not 1 MiB)."""
    crc32 = zlib.crc32
    byte = [
        [crc32(bytes([b]) + bytes(k)) ^ crc32(bytes(k + 1)) for b in range(256)] for k in range(8)
    ]
    forms = [0]
    for low, header, p in INT_FORMS:
        k = crc32(header + bytes(p))
        if low < 0:
            for j in range(p, 8):
                k ^= byte[j][0xFF]
        forms.append(k)
    t = np.array(byte, dtype=np.uint32)
    by_chunk = [(t[2 * j + 1][:, None] ^ t[2 * j][None, :]).ravel() for j in range(4)]
    dtype = np.uint8 if low_byte else np.uint32  # uint8: truncated to the low byte
    lows = np.array([low for low, _, _ in INT_FORMS], dtype=np.int64)
    return (
        lows,
        np.array(forms, dtype=np.uint32).astype(dtype),
        tuple(c.astype(dtype) for c in by_chunk),
    )
