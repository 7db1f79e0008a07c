"""Torn writes for the trials: what a write cut short by a crash leaves in each kind of store.

An object store that writes objects whole (a directory of files: temp file, fsync, link; S3)
can only be torn by a store without that guarantee, modelled as a strict prefix of the object
stored under its key (decision 0003): :func:`tear_object`.

The log's segment files (decision 0012, :mod:`dn.store.locallog`) are torn at the file level
instead: the object goes into its slot of a segment file, and a crash in the middle of that
``pwrite`` (before the ``fdatasync`` finished) leaves only part of it on the disk, with the
zeros of the slot where the rest did not land: :func:`tear_segment_write`. A disk writes a
512-byte sector whole or not at all, so the variants are

- *header*: the first sector cut inside the frame header (the slot holds part of a header);
- *prefix*: the first k sectors landed, the rest did not (zeros, or the file ends there when
  the write was extending it);
- *hole*: every sector landed but sector k (sectors reach the disk in any order).

A cut after a whole header inside the first sector is not made: a sector lands whole.

Callers: :class:`tests.trials.tripwire.Tripwire` (``when = "torn"``).
"""

from __future__ import annotations

import os

from dn.objects.codec import HEADER_SIZE
from dn.store.base import ObjectStore
from dn.store.locallog import SECTOR, SLOT, LocalLogStore


def tear_object(store: ObjectStore, op: str, key: str, data: bytes) -> None:
    """Store a strict prefix (half) of ``data`` under ``key`` with ``op``."""
    write = store.put_if_absent if op == "put_if_absent" else store.put
    write(key, data[: len(data) // 2])


def variants(size: int) -> list[tuple[str, int]]:
    """The torn shapes of a ``size``-byte object in a slot (see the module docstring), each
    as (kind, where): a byte count for *header*, a sector number for *prefix* and *hole*."""
    out = [("header", n) for n in (1, HEADER_SIZE // 2, HEADER_SIZE - 1)]
    sectors = -(-size // SECTOR)
    out += [("prefix", k) for k in range(1, sectors)]
    out += [("hole", k) for k in range(1, sectors)]
    return out


def tear_segment_write(store: LocalLogStore, key: str, data: bytes, pick: int) -> str:
    """Put ``data`` under ``key`` through ``store``, then take back from its slot the bytes a
    crash mid-``pwrite`` would not have written: variant ``pick`` (modulo their number) of
    :func:`variants`. Returns a description. ``ObjectExists`` (the slot was taken) means that
    nothing was written, as a real put would have left it."""
    store.put_if_absent(key, data)
    head, _, name = key.rpartition("/")
    seq = int(name)
    directory = store.root.joinpath(*head.split("/"))
    firsts = [
        int(n[: -len(".seg")])
        for n in os.listdir(directory)
        if n.endswith(".seg") and n[: -len(".seg")].isdigit()
    ]
    path = directory / f"{max(f for f in firsts if f <= seq):020d}.seg"
    fd = os.open(path, os.O_RDWR)
    try:
        end = os.fstat(fd).st_size
        blob = os.pread(fd, end, 0)
        off = blob.rfind(data)
        if off < SLOT or off % SLOT:
            raise AssertionError(f"{key}: its object is not in a slot of {path} (at {off})")
        kind, where = variants(len(data))[pick % len(variants(len(data)))]
        if kind == "header":
            lo, hi = off + where, off + len(data)
        elif kind == "prefix":
            lo, hi = off + where * SECTOR, off + len(data)
        else:
            lo, hi = off + where * SECTOR, min(off + (where + 1) * SECTOR, off + len(data))
        if hi == end and kind != "hole":
            os.ftruncate(fd, lo)  # the write was extending the file: it ends where it stopped
        else:
            os.pwrite(fd, bytes(hi - lo), lo)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return f"{kind} {where} of {key} ({len(data)} bytes at {off} of {path.name})"
