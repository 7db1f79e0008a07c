"""The segment file of the local log store: its layout, its slots, torn objects, spare files.

Layout of one segment file (in a log directory such as ``30/<shard>/``)::

    segment   := seghead slot*         file <first seq, 20 digits>.seg
    seghead   := b"DNLS" version:u8=1 pad:3 capacity:u64 crc:u32     (crc32 of the 16 bytes
                 before it; little-endian), then zeros up to SLOT (512 bytes)
    slot      := object zeros*         each object (a dn.objects.codec frame) starts at a
                                       multiple of SLOT; a slot whose first 20 bytes are zero
                                       is empty

Slot arithmetic: the first object of a segment is at offset SLOT; the object after one at
``off`` of ``size`` bytes is at ``align(off + size)``, unless that is at or past the segment's
``capacity`` or the object is torn: then the next object begins a new segment.

A *torn* object (a write that a crash cut short, never acknowledged) reads as torn, as a file
cut short would (decision 0003): a slot whose header is not a verified frame header reads as
its first bytes, shorter than a header; an object whose body fails its checksum, that is the
last of its segment and holds a 512-byte sector of zeros where a write did not land, reads cut
at that sector. Any other mismatch is returned as it is, for the codec to report as corruption.

A spare is a file with a segment header and (for small objects) zeros up to its capacity,
fsynced, named ``SPARE_PREFIX<pid>-<token>`` so that a later process can tell a dead maker's
leftovers from a live one's.

Callers: :mod:`dn.store.logdir` and :mod:`dn.store.locallog` only, under the store's lock
(``make_spare`` may run on a background thread: it touches no shared state).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import struct
import zlib
from pathlib import Path

from dn.errors import Corruption
from dn.objects.codec import HEADER, HEADER_CRC, HEADER_SIZE, MAGIC
from dn.store.local import TEMP_PREFIX

log = logging.getLogger(__name__)

SLOT = 512
SECTOR = 512
MiB = 1 << 20
MIN_SEGMENT = 1 * MiB
MAX_SEGMENT = 16 * MiB
#: Zeros are written ahead into a new segment only while the objects are smaller than this.
ZERO_FILL_BELOW = 32 * 1024
SEGMENT_SUFFIX = ".seg"
SPARE_PREFIX = f"{TEMP_PREFIX}spare-"
#: The first HEADER_SIZE bytes of an empty slot.
ZERO_HEAD = bytes(HEADER_SIZE)
_SEGHEAD = struct.Struct("<4sB3xQ")
_SEGHEAD_CRC = struct.Struct("<I")
_SEGMAGIC = b"DNLS"


def align(n: int) -> int:
    """``n`` rounded up to a whole slot."""
    return -(-n // SLOT) * SLOT


def frame_size(head: bytes) -> int | None:
    """The whole object's size from its first HEADER_SIZE bytes, or None if they are not a
    verified frame header."""
    if len(head) < HEADER_SIZE or head[:2] != MAGIC:
        return None
    if HEADER_CRC.unpack_from(head, HEADER.size)[0] != zlib.crc32(head[: HEADER.size]):
        return None
    return HEADER_SIZE + HEADER.unpack_from(head)[3]


def segment_name(first: int) -> str:
    """The file name of the segment whose first seq is ``first``."""
    return f"{first:020d}{SEGMENT_SUFFIX}"


def segment_first(name: str) -> int | None:
    """The first seq of the segment file called ``name``; None if it is no segment's name."""
    if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
        return int(name[: -len(SEGMENT_SUFFIX)])
    return None


class Segment:
    """One open segment file: ``first`` seq, ``path``, open ``fd``, ``capacity`` in bytes and
    the seqs in it that the store has ``deleted``."""

    __slots__ = ("first", "path", "fd", "capacity", "deleted")

    def __init__(self, first: int, path: Path, fd: int, capacity: int) -> None:
        self.first = first
        self.path = path
        self.fd = fd
        self.capacity = capacity
        self.deleted: set[int] = set()

    @classmethod
    def open(cls, first: int, path: Path) -> Segment | None:
        """The segment file at ``path`` opened and its header checked; None if there is no
        such file. A bad header is Corruption."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            head = os.pread(fd, _SEGHEAD.size + _SEGHEAD_CRC.size, 0)
        except BaseException:
            os.close(fd)
            raise
        ok = len(head) == _SEGHEAD.size + _SEGHEAD_CRC.size
        if ok:
            magic, version, capacity = _SEGHEAD.unpack_from(head)
            crc = _SEGHEAD_CRC.unpack_from(head, _SEGHEAD.size)[0]
            ok = magic == _SEGMAGIC and version == 1 and crc == zlib.crc32(head[: _SEGHEAD.size])
        if not ok:
            os.close(fd)
            raise Corruption(f"log segment {path} has a bad header", key=str(path))
        return cls(first, path, fd, capacity)

    def pread(self, n: int, off: int, *, shared: bool) -> bytes:
        """Up to ``n`` bytes at ``off``, under a shared (or exclusive) lock of the file."""
        fcntl.flock(self.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            return os.pread(self.fd, n, off)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def write_if_empty(self, off: int, data: bytes) -> int | None:
        """Under an exclusive lock of the file: if the slot at ``off`` is empty, write ``data``
        there and ``fdatasync`` it, and return the number of bytes written; None (nothing
        written) when the slot holds an object."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            head = os.pread(self.fd, HEADER_SIZE, off)
            if len(head) == HEADER_SIZE and head != ZERO_HEAD:
                return None
            written = os.pwrite(self.fd, data, off)
            os.fdatasync(self.fd)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return written

    def read(self, off: int) -> bytes | None:
        """The object in the slot at ``off`` (cut short when torn, see the module docstring);
        None when the slot is empty."""
        head = self.pread(HEADER_SIZE, off, shared=True)
        if len(head) < HEADER_SIZE or head == ZERO_HEAD:
            return None
        size = frame_size(head)
        if size is None:
            return head[: HEADER_SIZE - 1]  # a header that did not reach the disk whole: torn
        data = self.pread(size, off, shared=True)
        if (
            len(data) == size
            and zlib.crc32(memoryview(data)[HEADER_SIZE:]) == HEADER.unpack_from(data)[4]
        ):
            return data
        cut = self.torn_cut(off, size, data)
        return data if cut is None else data[:cut]  # whole bytes: corrupt, for the codec

    def torn_cut(self, off: int, size: int, data: bytes | None = None) -> int | None:
        """For a torn object at ``off`` (verified header, ``size`` bytes in all; ``data``
        when already read): the length of it that reached the disk; None when it is whole
        or corrupt. Torn: it is the last of its segment (no object in the slot after it),
        and its bytes run short or its body fails its checksum and holds a 512-byte sector
        (aligned in the file) of zeros."""
        nxt = align(off + size)
        if nxt < self.capacity:
            after = self.pread(HEADER_SIZE, nxt, shared=True)
            if len(after) == HEADER_SIZE and after != ZERO_HEAD:
                return None  # another object follows: this one was whole when that was placed
        if data is None:
            data = self.pread(size, off, shared=True)
        if len(data) < size:
            return max(HEADER_SIZE, len(data))
        if zlib.crc32(memoryview(data)[HEADER_SIZE:]) == HEADER.unpack_from(data)[4]:
            return None
        zero = bytes(SECTOR)
        start = -(-(off + HEADER_SIZE) // SECTOR) * SECTOR  # first sector boundary in the body
        for pos in range(start, off + size, SECTOR):
            chunk = data[pos - off : pos - off + SECTOR]
            if chunk == zero[: len(chunk)]:
                return pos - off
        return None


def make_spare(directory: Path, capacity: int, *, zero_fill: bool) -> tuple[Path, int]:
    """A new spare file in ``directory``: a segment header and (with ``zero_fill``) zeros up to
    ``capacity``, fsynced: ready to be linked as a segment. Returns (path, capacity)."""
    filled = capacity if zero_fill else SLOT
    path = directory / f"{SPARE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    head = _SEGHEAD.pack(_SEGMAGIC, 1, capacity)
    head += _SEGHEAD_CRC.pack(zlib.crc32(head))
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, head + bytes(SLOT - len(head)))
        zeros = bytes(MiB)
        pos = SLOT
        while pos < filled:
            pos += os.pwrite(fd, zeros[: min(MiB, filled - pos)], pos)
        os.fsync(fd)
    except BaseException:
        unlink_quietly(path)
        raise
    finally:
        os.close(fd)
    return path, capacity


def clear_dead_spares(directory: Path, names: list[str]) -> None:
    """Remove the spare files among ``names`` (in ``directory``) left by processes that are
    gone."""
    for name in names:
        if not name.startswith(SPARE_PREFIX):
            continue
        try:
            pid = int(name[len(SPARE_PREFIX) :].split("-", 1)[0])
            os.kill(pid, 0)
            continue  # its maker is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        unlink_quietly(directory / name)


def unlink_quietly(path: Path) -> None:
    """Remove ``path``; a missing file is fine, another failure is logged, not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove %s: %s", path, exc)
