"""Framing of every object the engine stores, and the bucket's key layout.

Grammar of one stored object (all integers little-endian; ``HEADER`` then ``HEADER_CRC``)::

    object  := header body
    header  := magic:2 = b"DN"     MAGIC
               kind:1              one of KIND_* below (frozen values)
               version:1           format version of this kind: FORMAT_VERSION (1), except
                                   checkpoints: 3 (dn.objects.checkpoint, which reads 1, 2)
                                   and ranges: 5 (dn.objects.rangeobj, which reads 1 to 4)
                                   and manifests: 2 (dn.objects.manifest, which reads 1 too)
               body_len:u64        length of body in bytes
               body_crc:u32        zlib.crc32 of body
               header_crc:u32      zlib.crc32 of the 16 header bytes before it
    body    := msgpack value       (the kind's own grammar is in its module docstring)

A reader checks, in this order, that there is a whole header, the header checksum, magic, kind,
version (one its caller reads), that the body is exactly ``body_len`` bytes, and the body
checksum, before it decodes anything; any mismatch raises :class:`dn.errors.Corruption` naming
the key. A body shorter than a verified header says (or no whole header) is *torn*:
``Corruption.truncated`` is True. Stores put atomically, so only a failed, never-acknowledged
write can leave a torn object; the log and the manifest treat a torn object as such a write.
Any other mismatch is corruption.

msgpack is packed with ``use_bin_type=True`` (str and bytes stay distinct) and unpacked
with ``raw=False``. Maps are written with their keys in the order each grammar shows them, so
the same value always gives the same bytes.

Key layout (numbers zero-padded to 20 digits so that listing order is numeric order)::

    00/<shard>/<version>        manifest versions            (dn.objects.manifest)
    10/<shard>/<ts>             checkpoints                  (dn.objects.checkpoint)
    20/<shard>/<from>_<to>      range objects                (dn.objects.rangeobj)
    30/<shard>/<seq>            log objects (group commits)  (dn.write.log)
    40/txn/<group hex>          transaction decisions        (dn.objects.decision)
    90/cluster/<version>        cluster record versions      (coordinator.actor.cluster_catalog)

The decoders of the first four check that the numbers a body names are those of its key
(:func:`check_key_numbers`). Golden fixtures of every kind: ``tests/test_formats.py``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from dn.errors import Corruption

MAGIC = b"DN"
HEADER = struct.Struct("<2sBBQI")
HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size + HEADER_CRC.size  # 20

# Frozen kind values: never renumber.
KIND_LOG = ord("L")
KIND_RANGE = ord("R")
KIND_CHECKPOINT = ord("C")
KIND_MANIFEST = ord("M")
KIND_CLUSTER = ord("K")
KIND_DECISION = ord("D")

FORMAT_VERSION = 1

PAD = 20


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def unpack_tuples(data: bytes) -> Any:
    """Unpack with arrays as tuples (rows and composite keys as the engine keeps them)."""
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)


_ARRAY16 = struct.Struct(">H")
_ARRAY32 = struct.Struct(">I")


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + _ARRAY16.pack(n)
    return b"\xdd" + _ARRAY32.pack(n)


def frame(kind: int, body: bytes, version: int = FORMAT_VERSION) -> bytes:
    """Wrap an encoded body in the object header."""
    return frame_parts(kind, [body], version)


def frame_parts(kind: int, parts: list, version: int = FORMAT_VERSION) -> bytes:
    """:func:`frame` of the body ``b"".join(parts)`` (bytes-like parts), copied once: the
    header's length and checksum are taken over the parts (``zlib.crc32`` runs without the
    GIL on large buffers), then header and parts are joined. A range object of a large
    buffer is tens of MB, and each copy of it held the GIL (a shard's read calls waited)."""
    length, crc = 0, 0
    for part in parts:
        length += memoryview(part).nbytes
        crc = zlib.crc32(part, crc)
    head = HEADER.pack(MAGIC, kind, version, length, crc)
    return b"".join([head, HEADER_CRC.pack(zlib.crc32(head)), *parts])


def unframe(
    kind: int, data: bytes, key: str, versions: tuple[int, ...] = (FORMAT_VERSION,)
) -> memoryview:
    """The body of a stored object after every check; raises Corruption naming ``key``.
    ``versions``: the format versions of ``kind`` the caller reads."""
    _, length, crc = check_header(kind, data, key, versions)
    body = memoryview(data)[HEADER_SIZE:]
    if len(body) != length:
        raise Corruption(
            f"object {key} is truncated or padded: body {len(body)} bytes, header says {length}",
            key=key,
            truncated=len(body) < length,
        )
    if zlib.crc32(body) != crc:
        raise Corruption(f"object {key} fails its checksum", key=key)
    return body


def check_header(
    kind: int, data: bytes, key: str, versions: tuple[int, ...]
) -> tuple[int, int, int]:
    """Check the header at the start of ``data`` (the object, or its first bytes: a partial
    read); return its (version, body_len, body_crc). Raises Corruption naming ``key``."""
    if len(data) < HEADER_SIZE:
        raise Corruption(
            f"object {key} is truncated ({len(data)} bytes, no header)", key=key, truncated=True
        )
    magic, got_kind, version, length, crc = HEADER.unpack_from(data)
    if HEADER_CRC.unpack_from(data, HEADER.size)[0] != zlib.crc32(memoryview(data)[: HEADER.size]):
        raise Corruption(f"object {key} fails its header checksum", key=key)
    if magic != MAGIC:
        raise Corruption(f"object {key} has a bad magic number", key=key)
    if got_kind != kind:
        raise Corruption(f"object {key} is of kind {got_kind}, expected {kind}", key=key)
    if version not in versions:
        raise Corruption(f"object {key} has unknown format version {version}", key=key)
    return version, length, crc


def encode(kind: int, value: Any, version: int = FORMAT_VERSION) -> bytes:
    return frame(kind, pack(value), version)


def decode(kind: int, data: bytes, key: str, versions: tuple[int, ...] = (FORMAT_VERSION,)) -> Any:
    body = unframe(kind, data, key, versions)
    try:
        return unpack(body)
    except Exception as exc:  # msgpack raises several unrelated types
        raise Corruption(f"object {key} does not decode: {exc}", key=key) from exc


def version_of(data: bytes) -> int:
    """The format version in the header of ``data`` (an object :func:`unframe` accepted)."""
    return data[3]


def num(n: int) -> str:
    """A number as it appears in keys: zero-padded to 20 digits."""
    return f"{n:0{PAD}d}"


def manifest_prefix(shard: int) -> str:
    return f"00/{shard}/"


def manifest_key(shard: int, version: int) -> str:
    return f"00/{shard}/{num(version)}"


def checkpoint_prefix(shard: int) -> str:
    return f"10/{shard}/"


def checkpoint_key(shard: int, ts: int) -> str:
    return f"10/{shard}/{num(ts)}"


def range_prefix(shard: int) -> str:
    return f"20/{shard}/"


def range_key(shard: int, from_ts: int, to_ts: int) -> str:
    return f"20/{shard}/{num(from_ts)}_{num(to_ts)}"


def log_prefix(shard: int) -> str:
    return f"30/{shard}/"


def log_key(shard: int, seq: int) -> str:
    return f"30/{shard}/{num(seq)}"


def last_number(key: str) -> int:
    """The trailing number of a key (``.../00000000000000000042`` -> 42)."""
    return int(key.rsplit("/", 1)[1].rsplit("_", 1)[-1])


def check_key_numbers(key: str, numbers: tuple[int, ...]) -> None:
    """Raise Corruption unless the numbers an object's body names (version, timestamp, range,
    sequence number) are those its key names: a valid object under the wrong key (a misplaced
    or swapped object) must not be read as data. Keys not in the layout above are not checked
    (tests decode objects under labels of their own)."""
    parts = key.rsplit("/", 1)[-1].split("_")
    # a number may be negative: the first range after settling slot moves (dn.upkeep.absorb)
    if not all(len(p) == PAD and p.removeprefix("-").isdigit() for p in parts):
        return
    if tuple(int(p) for p in parts) != tuple(numbers):
        raise Corruption(
            f"object {key} holds the object of {numbers}, not the one its key "
            "names (a misplaced object)",
            key=key,
        )
