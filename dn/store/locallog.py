"""LocalLogStore: the log's objects in segment files, one ``fdatasync`` of data per group commit.

The log (:mod:`dn.log`) writes one object per group commit with ``put_if_absent`` under the keys
``<dir>/<20-digit seq>``. On a plain :class:`~dn.store.local.LocalStore` that is a temp file, its
fsync, a link and a directory fsync per write. This store keeps the same contract for the log's
keys at the price of one ``pwrite`` and one ``fdatasync`` into a file that already exists, is
already large enough and (for small records) already holds zeros on disk, so the sync writes data
blocks only: no file size, block allocation or directory entry to commit to the journal.

Layout of one log directory (``30/<shard>/``)::

    segment   := seghead slot*         file <first seq, 20 digits>.seg
    seghead   := b"DNLS" version:u8=1 pad:3 capacity:u64 crc:u32     (crc32 of the 16 bytes
                 before it; little-endian), then zeros up to SLOT (512 bytes)
    slot      := object zeros*         each object (a dn.codec frame) starts at a multiple of
                                       SLOT; a slot whose first 20 bytes are zero is empty

Where seq N lives follows from the objects before it, the same for every process that reads
them: the first seq of a segment is in slot 1 (offset SLOT); seq N+1 is in the slot after N's
object (its length is in its verified frame header) in the same segment, unless that slot is at
or past the segment's ``capacity``, or N is torn, and then seq N+1 is the first seq of a new
segment named N+1. So a torn object is always the last one of its segment.

- **put_if_absent** under an exclusive ``flock`` of the segment file: the slot's first bytes
  zero (or past the end of the file) -> ``pwrite`` the object, ``fdatasync``; otherwise
  ``ObjectExists``. Every writer of this store locks, so racing writers of one key (a stale
  incarnation and its successor, in any process on this host) have exactly one winner, and
  every reader sees the winner's bytes. A new segment is a pre-made spare file (header and
  zeros written and fsynced on a background thread) linked to its name (``link`` fails if
  another writer made it first: then that one is used) and the directory fsynced, before any
  object goes in. Segments double in capacity from ``min_segment`` to ``max_segment``; the
  zeros are written ahead only while objects are small (``ZERO_FILL_BELOW``): a large object
  is cheaper to append than to write zeros for.
- **get**, under a shared lock: the object; an empty slot is ``ObjectNotFound``. A *torn*
  object (a write that a crash cut short, never acknowledged) reads as torn, as a file cut
  short would (decision 0003): a slot whose header is not a verified frame header reads as its
  first bytes, shorter than a header; an object whose body fails its checksum, that is the last
  of its segment and holds a 512-byte sector of zeros where a write did not land, reads cut at
  that sector. Any other mismatch is returned as it is, for the codec to report as corruption.
- **list** walks every segment's chain of objects.
- **delete** forgets a key; a segment file is removed once every key in it is deleted and a
  later segment exists. A key deleted in a segment not yet removed lists again after a restart
  (the log deletes everything below its low-water mark again at recovery). A deleted sequence
  number is never written again (the log never reuses one): ``put_if_absent`` refuses it.
- Files of the earlier layout (one file per seq, named by the 20-digit seq; empty = absent)
  are still read, listed and deleted; new objects always go to segments.

Who uses it: :meth:`dn.Engine.open` for the log when the log lives on a local directory. Only
for the log's keys and objects (dn.codec frames). Any thread; one lock per store instance.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import struct
import threading
import zlib
from bisect import bisect_right
from pathlib import Path

from dn.codec import HEADER, HEADER_CRC, HEADER_SIZE, MAGIC
from dn.errors import Corruption, InvalidArgument, ObjectExists, ObjectNotFound, Unavailable
from dn.store.local import TEMP_PREFIX, LocalStore, _fsync_dir, check_key

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
_SEGHEAD = struct.Struct("<4sB3xQ")
_SEGHEAD_CRC = struct.Struct("<I")
_SEGMAGIC = b"DNLS"
_ZERO_HEAD = bytes(HEADER_SIZE)


def _align(n: int) -> int:
    return -(-n // SLOT) * SLOT


def _frame_size(head: bytes) -> int | None:
    """The whole object's size from its first HEADER_SIZE bytes, or None if they are not a
    verified frame header."""
    if len(head) < HEADER_SIZE or head[:2] != MAGIC:
        return None
    if HEADER_CRC.unpack_from(head, HEADER.size)[0] != zlib.crc32(head[:HEADER.size]):
        return None
    return HEADER_SIZE + HEADER.unpack_from(head)[3]


class _Segment:
    """One open segment file of a directory."""

    __slots__ = ("first", "path", "fd", "capacity", "deleted")

    def __init__(self, first: int, path: Path, fd: int, capacity: int) -> None:
        self.first = first
        self.path = path
        self.fd = fd
        self.capacity = capacity
        self.deleted: set[int] = set()


class _Dir:
    """What this store knows of one log directory."""

    __slots__ = ("path", "legacy", "segments", "firsts", "where", "ends", "sizes", "spare",
                 "filling")

    def __init__(self, path: Path, legacy: bool) -> None:
        self.path = path
        self.legacy = legacy  # files of the earlier layout (a file per seq) are here
        self.segments: dict[int, _Segment] = {}
        self.firsts: list[int] = []  # first seqs of the segment files, ascending
        # seq -> (segment first seq, offset) for every slot located so far, and for the slot
        # after the last located object; ends: seqs whose successor starts a new segment
        self.where: dict[int, tuple[int, int]] = {}
        self.ends: set[int] = set()
        self.sizes: list[int] = []  # sizes of recent objects (what the next segment is for)
        self.spare: tuple[Path, int] | None = None  # (path, capacity) of a ready spare
        self.filling = False


class LocalLogStore(LocalStore):
    """The log's store on a local directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, min_segment: int = MIN_SEGMENT,
                 max_segment: int = MAX_SEGMENT) -> None:
        super().__init__(root)
        if not SLOT * 2 <= min_segment <= max_segment:
            raise InvalidArgument(f"segment sizes must satisfy {2 * SLOT} <= min <= max")
        self.min_segment = min_segment
        self.max_segment = max_segment
        self._lock = threading.RLock()
        self._dirs: dict[Path, _Dir] = {}
        self._by_key: dict[str, _Dir] = {}  # a key's directory part -> its directory

    def __repr__(self) -> str:
        return f"LocalLogStore({str(self.root)!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"root": str(self.root), "min": self.min_segment, "max": self.max_segment}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["root"], min_segment=state.get("min", MIN_SEGMENT),  # type: ignore
                      max_segment=state.get("max", MAX_SEGMENT))

    # -- keys and directories ---------------------------------------------------------------

    def _seq_of(self, key: str) -> tuple[_Dir, int, str]:
        """The directory, sequence number and file name (of the earlier layout) of a key."""
        head, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        d = self._by_key.get(head)
        if d is None or not name.isdigit() or not name.isascii():
            path = self._path(key)
            if not name.isdigit() or not name.isascii():
                raise InvalidArgument(f"log key {key!r} does not end in a sequence number")
            d = self._by_key[head] = self._dir(path.parent)
        return d, int(name), name

    def _dir(self, path: Path) -> _Dir:
        d = self._dirs.get(path)
        if d is None:
            try:
                names = os.listdir(path)
            except (FileNotFoundError, NotADirectoryError):
                names = []
            d = self._dirs[path] = _Dir(path, any(len(n) == 20 and n.isdigit() for n in names))
            self._clear_dead_spares(d, names)
        return d

    def _scan_segments(self, d: _Dir) -> None:
        """Learn the segment files of ``d`` that exist now."""
        try:
            names = os.listdir(d.path)
        except FileNotFoundError:
            return
        firsts = set(d.firsts)
        for name in names:
            if name.endswith(SEGMENT_SUFFIX) and name[:-len(SEGMENT_SUFFIX)].isdigit():
                firsts.add(int(name[:-len(SEGMENT_SUFFIX)]))
        d.firsts = sorted(firsts)

    def _segment(self, d: _Dir, first: int) -> _Segment | None:
        """The open segment whose first seq is ``first``, or None if there is no such file."""
        seg = d.segments.get(first)
        if seg is not None:
            return seg
        path = d.path / f"{first:020d}{SEGMENT_SUFFIX}"
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
            ok = magic == _SEGMAGIC and version == 1 and crc == zlib.crc32(head[:_SEGHEAD.size])
        if not ok:
            os.close(fd)
            raise Corruption(f"log segment {path} has a bad header", key=str(path))
        seg = d.segments[first] = _Segment(first, path, fd, capacity)
        if first not in d.firsts:
            d.firsts.insert(bisect_right(d.firsts, first), first)
        return seg

    # -- locating a seq ---------------------------------------------------------------------

    def _locate(self, d: _Dir, seq: int) -> tuple[_Segment, int] | None:
        """The slot of ``seq`` (its segment and offset), or None when it is in no segment: no
        chain of objects reaches it (a gap after the last object, or no segment before it), or
        it would begin a segment that does not exist yet."""
        at = d.where.get(seq)
        if at is None and (seq - 1) in d.ends:
            at = (seq, SLOT)
        if at is None:
            at = self._walk_to(d, seq)
            if at is None:
                return None
        seg = self._segment(d, at[0])
        if seg is None:
            d.where.pop(seq, None)
            return None
        d.where[seq] = at
        return seg, at[1]

    def _walk_to(self, d: _Dir, seq: int) -> tuple[int, int] | None:
        """Follow the chain of objects from the start of the segment that can hold ``seq``
        (or from seq-1, when its slot is known) up to ``seq``; every slot passed is recorded."""
        if (seq - 1) in d.where:
            cur = seq - 1
        else:
            self._scan_segments(d)
            i = bisect_right(d.firsts, seq) - 1
            if i < 0:
                return None
            cur = d.firsts[i]
            d.where.setdefault(cur, (cur, SLOT))
        while cur < seq:
            if self._segment(d, d.where[cur][0]) is None:
                return None
            nxt = self._next_slot(d, cur)
            if nxt is None:
                return None  # cur's slot is empty: nothing after it is written yet
            cur += 1
            if nxt == "new":
                if self._segment(d, cur) is None:
                    return None
                d.where[cur] = (cur, SLOT)
        return d.where[seq]

    def _next_slot(self, d: _Dir, seq: int) -> str | None:
        """Record where seq+1 goes, from seq's object: "same" (a slot of seq's segment,
        recorded in ``where``), "new" (it begins a segment), or None when seq's slot is
        empty."""
        if seq in d.ends:
            return "new"
        if seq + 1 in d.where:
            return "same"
        first, off = d.where[seq]
        seg = self._segment(d, first)
        assert seg is not None
        head = self._pread(seg, HEADER_SIZE, off, shared=True)
        if len(head) < HEADER_SIZE or head == _ZERO_HEAD:
            return None
        size = _frame_size(head)
        nxt = None if size is None else _align(off + size)
        if size is None or nxt >= seg.capacity or self._torn_cut(seg, off, size) is not None:
            d.ends.add(seq)
            return "new"
        d.where[seq + 1] = (first, nxt)
        return "same"

    def _torn_cut(self, seg: _Segment, off: int, size: int, data: bytes | None = None
                  ) -> int | None:
        """For a torn object at ``off`` (verified header, ``size`` bytes in all; ``data``
        when already read): the length of it that reached the disk; None when it is whole
        or corrupt. Torn: it is the last of its segment (no object in the slot after it),
        and its bytes run short or its body fails its checksum and holds a 512-byte sector
        (aligned in the file) of zeros."""
        nxt = _align(off + size)
        if nxt < seg.capacity:
            after = self._pread(seg, HEADER_SIZE, nxt, shared=True)
            if len(after) == HEADER_SIZE and after != _ZERO_HEAD:
                return None  # another object follows: this one was whole when that was placed
        if data is None:
            data = self._pread(seg, size, off, shared=True)
        if len(data) < size:
            return max(HEADER_SIZE, len(data))
        if zlib.crc32(memoryview(data)[HEADER_SIZE:]) == HEADER.unpack_from(data)[4]:
            return None
        zero = bytes(SECTOR)
        start = -(-(off + HEADER_SIZE) // SECTOR) * SECTOR  # first sector boundary in the body
        for pos in range(start, off + size, SECTOR):
            chunk = data[pos - off:pos - off + SECTOR]
            if chunk == zero[:len(chunk)]:
                return pos - off
        return None

    def _pread(self, seg: _Segment, n: int, off: int, *, shared: bool) -> bytes:
        fcntl.flock(seg.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            return os.pread(seg.fd, n, off)
        finally:
            fcntl.flock(seg.fd, fcntl.LOCK_UN)

    # -- segments and spares ----------------------------------------------------------------

    def _new_segment(self, d: _Dir, first: int, prev: _Segment | None) -> _Segment:
        """Make segment ``first`` exist (from the spare when there is one) and open it."""
        self._make_parents(d.path / "x")
        capacity = self._capacity_after(prev)
        spare = d.spare
        d.spare = None
        if spare is None or spare[1] < capacity:
            if spare is not None:
                _unlink_quietly(spare[0])
            spare = self._make_spare(d, capacity)
        path = d.path / f"{first:020d}{SEGMENT_SUFFIX}"
        try:
            os.link(spare[0], path)
        except FileExistsError:
            pass  # another writer made it: use theirs
        finally:
            _unlink_quietly(spare[0])
        _fsync_dir(d.path)
        seg = self._segment(d, first)
        if seg is None:
            raise Unavailable(f"log segment {path} vanished as it was made", key=str(path))
        return seg

    def _capacity_after(self, prev: _Segment | None) -> int:
        """The capacity of the segment that follows ``prev`` (the first: ``min_segment``)."""
        if prev is None:
            return self.min_segment
        return min(self.max_segment, max(self.min_segment, 2 * prev.capacity))

    def _make_spare(self, d: _Dir, capacity: int) -> tuple[Path, int]:
        """A file with a segment header and (for small objects) zeros up to ``capacity``,
        fsynced: ready to be linked as a segment."""
        small = not d.sizes or max(d.sizes) < ZERO_FILL_BELOW
        filled = capacity if small else SLOT
        path = d.path / f"{SPARE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        head = _SEGHEAD.pack(_SEGMAGIC, 1, capacity)
        head += _SEGHEAD_CRC.pack(zlib.crc32(head))
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, head + bytes(SLOT - len(head)))
            zeros = bytes(MiB)
            pos = SLOT
            while pos < filled:
                pos += os.pwrite(fd, zeros[:min(MiB, filled - pos)], pos)
            os.fsync(fd)
        except BaseException:
            _unlink_quietly(path)
            raise
        finally:
            os.close(fd)
        return path, capacity

    def _maybe_refill(self, d: _Dir, seg: _Segment, off: int) -> None:
        """Start making the next segment's spare once this one is half used."""
        if d.spare is not None or d.filling or off < seg.capacity // 2:
            return
        d.filling = True
        threading.Thread(target=self._refill, args=(d, self._capacity_after(seg)),
                         name="dn-log-spare",
                         daemon=True).start()

    def _refill(self, d: _Dir, capacity: int) -> None:
        try:
            spare = self._make_spare(d, capacity)
        except OSError as exc:  # the writer makes what it needs itself
            log.warning("pre-making a log segment in %s failed: %s", d.path, exc)
            spare = None
        with self._lock:
            d.filling = False
            if spare is not None:
                if d.spare is None:
                    d.spare = spare
                else:
                    _unlink_quietly(spare[0])

    def _clear_dead_spares(self, d: _Dir, names: list[str]) -> None:
        """Remove spare files left by processes that are gone."""
        for name in names:
            if not name.startswith(SPARE_PREFIX):
                continue
            try:
                pid = int(name[len(SPARE_PREFIX):].split("-", 1)[0])
                os.kill(pid, 0)
                continue  # its maker is alive
            except ProcessLookupError:
                pass
            except (ValueError, PermissionError):
                continue
            _unlink_quietly(d.path / name)

    # -- the store protocol -----------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes) -> None:
        size = _frame_size(bytes(data[:HEADER_SIZE]))
        if size is None or size != len(data):
            raise InvalidArgument(f"{key}: the log store holds only whole dn.codec frames")
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                self._put(d, seq, name, key, data)
            except (ObjectExists, InvalidArgument):
                raise
            except OSError as exc:
                raise Unavailable(f"log write of {key} in {d.path} failed: {exc}",
                                  outcome_unknown=True, key=key) from exc

    def _put(self, d: _Dir, seq: int, name: str, key: str, data: bytes) -> None:
        if d.legacy and _legacy_size(d.path / name):
            raise ObjectExists(f"object {key} already exists", key=key)
        at = self._locate(d, seq)
        if at is None:
            at = self._place_new(d, seq, key)
        seg, off = at
        if seq in seg.deleted:
            raise InvalidArgument(f"log key {key} was deleted; sequence numbers are not reused")
        fcntl.flock(seg.fd, fcntl.LOCK_EX)
        try:
            head = os.pread(seg.fd, HEADER_SIZE, off)
            if len(head) == HEADER_SIZE and head != _ZERO_HEAD:
                raise ObjectExists(f"object {key} already exists", key=key)
            written = os.pwrite(seg.fd, data, off)
            os.fdatasync(seg.fd)
        finally:
            fcntl.flock(seg.fd, fcntl.LOCK_UN)
        if written != len(data):
            raise Unavailable(f"log write of {key} was short ({written} of {len(data)} bytes)",
                              outcome_unknown=True, key=key)
        d.sizes = [*d.sizes[-15:], len(data)]
        nxt = _align(off + len(data))
        if nxt >= seg.capacity:
            d.ends.add(seq)
        else:
            d.where[seq + 1] = (seg.first, nxt)
            self._maybe_refill(d, seg, nxt)

    def _place_new(self, d: _Dir, seq: int, key: str) -> tuple[_Segment, int]:
        """Begin segment ``seq``: allowed when seq-1 ends its segment, or when no object
        precedes it at all (a new log, or one in the earlier layout)."""
        self._scan_segments(d)
        i = bisect_right(d.firsts, seq) - 1
        prev = None
        if i >= 0:
            prev = self._segment(d, d.firsts[i])
            if not (seq - 1 in d.ends or (self._locate(d, seq - 1) is not None
                                          and self._next_slot(d, seq - 1) == "new")):
                raise InvalidArgument(
                    f"log key {key} is not the next sequence number of {d.path} "
                    "(the log writes its sequence numbers in order)")
        seg = self._new_segment(d, seq, prev)
        d.where[seq] = (seq, SLOT)
        return seg, SLOT

    def get(self, key: str) -> bytes:
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                legacy = _read_legacy(d.path / name) if d.legacy else None
                if legacy is not None:
                    if not legacy:
                        raise ObjectNotFound(f"object {key} does not exist", key=key)
                    return legacy
                at = self._locate(d, seq)
                if at is None or seq in at[0].deleted:
                    raise ObjectNotFound(f"object {key} does not exist", key=key)
                return self._read(at[0], at[1], key)
            except (ObjectNotFound, InvalidArgument):
                raise
            except OSError as exc:
                raise Unavailable(f"cannot read {key} in {d.path}: {exc}", key=key) from exc

    def _read(self, seg: _Segment, off: int, key: str) -> bytes:
        head = self._pread(seg, HEADER_SIZE, off, shared=True)
        if len(head) < HEADER_SIZE or head == _ZERO_HEAD:
            raise ObjectNotFound(f"object {key} does not exist", key=key)
        size = _frame_size(head)
        if size is None:
            return head[:HEADER_SIZE - 1]  # a header that did not reach the disk whole: torn
        data = self._pread(seg, size, off, shared=True)
        if len(data) == size and zlib.crc32(memoryview(data)[HEADER_SIZE:]) == \
                HEADER.unpack_from(data)[4]:
            return data
        cut = self._torn_cut(seg, off, size, data)
        return data if cut is None else data[:cut]  # whole bytes: corrupt, for the codec

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, is_prefix=True)
        dir_part, _, name_part = prefix.rpartition("/")
        directory = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        base = dir_part + "/" if dir_part else ""
        with self._lock:
            try:
                return self._list(directory, base, name_part)
            except OSError as exc:
                raise Unavailable(f"cannot list {directory}: {exc}") from exc

    def _list(self, directory: Path, base: str, name_part: str) -> list[str]:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        seqs: set[int] = set()
        for name in names:  # the earlier layout: a file per seq, empty = absent
            if len(name) == 20 and name.isdigit() and _legacy_size(directory / name):
                seqs.add(int(name))
        d = self._dir(directory)
        self._scan_segments(d)
        for first in d.firsts:
            seg = self._segment(d, first)
            if seg is None:
                continue
            d.where.setdefault(first, (first, SLOT))
            cur = first
            while True:
                nxt = self._next_slot(d, cur)
                if nxt is None:
                    break  # an empty slot: the chain ends
                if cur not in seg.deleted:
                    seqs.add(cur)
                if nxt == "new":
                    break
                cur += 1
        keys = [f"{base}{s:020d}" for s in sorted(seqs)]
        return [k for k in keys if k[len(base):].startswith(name_part)]

    def delete(self, key: str) -> None:
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                if d.legacy and _legacy_size(d.path / name) is not None:
                    super().delete(key)
                    return
                at = self._locate(d, seq)
                if at is None:
                    return
                seg = at[0]
                seg.deleted.add(seq)
                d.where.pop(seq, None)
                self._drop_if_done(d, seg)
            except OSError as exc:
                raise Unavailable(f"cannot delete {key} in {d.path}: {exc}", key=key) from exc

    def _drop_if_done(self, d: _Dir, seg: _Segment) -> None:
        """Remove ``seg``'s file once a later segment exists and every seq in it is deleted."""
        i = d.firsts.index(seg.first)
        if i + 1 >= len(d.firsts):
            return
        count = d.firsts[i + 1] - seg.first
        if len(seg.deleted) < count:
            return
        os.close(seg.fd)
        del d.segments[seg.first]
        d.firsts.pop(i)
        for s in range(seg.first, seg.first + count):
            d.where.pop(s, None)
            d.ends.discard(s)
        os.unlink(seg.path)
        _fsync_dir(d.path)

    def put(self, key: str, data: bytes) -> None:
        raise InvalidArgument("the log store takes only put_if_absent: log objects are never "
                              "replaced")

    def close(self) -> None:
        with self._lock:
            for d in self._dirs.values():
                for seg in d.segments.values():
                    os.close(seg.fd)
                d.segments.clear()
                if d.spare is not None:
                    _unlink_quietly(d.spare[0])
                    d.spare = None
            self._dirs.clear()
            self._by_key.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, or never fully made
            pass


def _legacy_size(path: Path) -> int | None:
    """The size of ``path`` if it is a file of the earlier layout (a file per seq), else
    None."""
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_legacy(path: Path) -> bytes | None:
    """The object in a file of the earlier layout (the first framed object in it: when two
    writers raced, the one that came first), b"" for an empty (pre-created) file, None if
    there is no such file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(data) >= HEADER_SIZE:
        length = HEADER.unpack_from(data)[3]
        if len(data) > HEADER_SIZE + length:
            return data[:HEADER_SIZE + length]
    return data


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove %s: %s", path, exc)
