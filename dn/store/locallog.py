"""LocalLogStore: the log's objects in segment files, one ``fdatasync`` of data per group commit.

The log (:mod:`dn.write.log`) writes one object per group commit with ``put_if_absent`` under
the keys ``<dir>/<20-digit seq>``. On a plain :class:`~dn.store.local.LocalStore` that is a temp
file, its fsync, a link and a directory fsync per write. This store keeps the same contract for
the log's keys at the price of one ``pwrite`` and one ``fdatasync`` into a file that already
exists, is already large enough and (for small records) already holds zeros on disk, so the
sync writes data blocks only: no file size, block allocation or directory entry to commit to the
journal.

A log directory (``30/<shard>/``) holds segment files, each a header and slots of objects; the
format and the slot arithmetic are :mod:`dn.store.logsegment`, and how a seq is found from the
objects before it (the same for every process that reads them) is :mod:`dn.store.logdir`. This
module is the store protocol on top of them:

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
  short would (decision 0003; the details are in :mod:`dn.store.logsegment`). Any other
  mismatch is returned as it is, for the codec to report as corruption.
- **list** walks every segment's chain of objects.
- **delete** forgets a key; a segment file is removed once every key in it is deleted and a
  later segment exists. A key deleted in a segment not yet removed lists again after a restart
  (the log deletes everything below its low-water mark again at recovery). A deleted sequence
  number is never written again (the log never reuses one): ``put_if_absent`` refuses it.
- Files of the earlier layout (one file per seq, named by the 20-digit seq; empty = absent)
  are still read, listed and deleted; new objects always go to segments.

Who uses it: :meth:`dn.Engine.open` for the log when the log lives on a local directory. Only
for the log's keys and objects (dn.objects.codec frames). Any thread; one lock per store
instance. ``SLOT`` and ``SECTOR`` are re-exported from :mod:`dn.store.logsegment` for callers
that place bytes in a segment file.
"""

from __future__ import annotations

import logging
import os
import threading
from bisect import bisect_right
from pathlib import Path

from dn.errors import InvalidArgument, ObjectExists, ObjectNotFound, Unavailable
from dn.objects.codec import HEADER_SIZE
from dn.store.files import fsync_dir
from dn.store.local import LocalStore, check_key
from dn.store.logdir import LogDir, legacy_size, read_legacy
from dn.store.logsegment import (
    MAX_SEGMENT,
    MIN_SEGMENT,
    SECTOR,
    SLOT,
    Segment,
    clear_dead_spares,
    frame_size,
    segment_name,
    unlink_quietly,
)

__all__ = ["MAX_SEGMENT", "MIN_SEGMENT", "SECTOR", "SLOT", "LocalLogStore"]

log = logging.getLogger(__name__)


class LocalLogStore(LocalStore):
    """The log's store on a local directory (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        min_segment: int = MIN_SEGMENT,
        max_segment: int = MAX_SEGMENT,
    ) -> None:
        super().__init__(root)
        if not SLOT * 2 <= min_segment <= max_segment:
            raise InvalidArgument(f"segment sizes must satisfy {2 * SLOT} <= min <= max")
        self.min_segment = min_segment
        self.max_segment = max_segment
        self._lock = threading.RLock()
        self._dirs: dict[Path, LogDir] = {}
        self._by_key: dict[str, LogDir] = {}  # a key's directory part -> its directory

    def __repr__(self) -> str:
        return f"LocalLogStore({str(self.root)!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"root": str(self.root), "min": self.min_segment, "max": self.max_segment}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(
            state["root"],
            min_segment=state.get("min", MIN_SEGMENT),  # type: ignore
            max_segment=state.get("max", MAX_SEGMENT),
        )

    # -- keys and directories ---------------------------------------------------------------

    def _seq_of(self, key: str) -> tuple[LogDir, int, str]:
        """The directory, sequence number and file name (of the earlier layout) of a key."""
        head, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        d = self._by_key.get(head)
        if d is None or not name.isdigit() or not name.isascii():
            path = self._path(key)
            if not name.isdigit() or not name.isascii():
                raise InvalidArgument(f"log key {key!r} does not end in a sequence number")
            d = self._by_key[head] = self._dir(path.parent)
        return d, int(name), name

    def _dir(self, path: Path) -> LogDir:
        d = self._dirs.get(path)
        if d is None:
            try:
                names = os.listdir(path)
            except (FileNotFoundError, NotADirectoryError):
                names = []
            d = self._dirs[path] = LogDir(path, any(len(n) == 20 and n.isdigit() for n in names))
            clear_dead_spares(d.path, names)
        return d

    def _locate(self, d: LogDir, seq: int) -> tuple[Segment, int] | None:
        """The slot of ``seq`` in ``d`` (its segment and offset), or None: see
        :meth:`LogDir.locate`."""
        return d.locate(seq)

    # -- segments and spares ----------------------------------------------------------------

    def _new_segment(self, d: LogDir, first: int, prev: Segment | None) -> Segment:
        """Make segment ``first`` exist (from the spare when there is one) and open it."""
        self._make_parents(d.path / "x")
        capacity = self._capacity_after(prev)
        spare = d.spare
        d.spare = None
        if spare is None or spare[1] < capacity:
            if spare is not None:
                unlink_quietly(spare[0])
            spare = d.make_spare(capacity)
        path = d.path / segment_name(first)
        try:
            os.link(spare[0], path)
        except FileExistsError:
            pass  # another writer made it: use theirs
        finally:
            unlink_quietly(spare[0])
        fsync_dir(d.path)
        seg = d.segment(first)
        if seg is None:
            raise Unavailable(f"log segment {path} vanished as it was made", key=str(path))
        return seg

    def _capacity_after(self, prev: Segment | None) -> int:
        """The capacity of the segment that follows ``prev`` (the first: ``min_segment``)."""
        if prev is None:
            return self.min_segment
        return min(self.max_segment, max(self.min_segment, 2 * prev.capacity))

    def _maybe_refill(self, d: LogDir, seg: Segment, off: int) -> None:
        """Start making the next segment's spare once this one is half used."""
        if d.spare is not None or d.filling or off < seg.capacity // 2:
            return
        d.filling = True
        threading.Thread(
            target=self._refill,
            args=(d, self._capacity_after(seg)),
            name="dn-log-spare",
            daemon=True,
        ).start()

    def _refill(self, d: LogDir, capacity: int) -> None:
        try:
            spare = d.make_spare(capacity)
        except OSError as exc:  # the writer makes what it needs itself
            log.warning("pre-making a log segment in %s failed: %s", d.path, exc)
            spare = None
        with self._lock:
            d.filling = False
            if spare is not None:
                if d.spare is None:
                    d.spare = spare
                else:
                    unlink_quietly(spare[0])

    # -- the store protocol -----------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes) -> None:
        size = frame_size(bytes(data[:HEADER_SIZE]))
        if size is None or size != len(data):
            raise InvalidArgument(f"{key}: the log store holds only whole dn.objects.codec frames")
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                self._put(d, seq, name, key, data)
            except (ObjectExists, InvalidArgument):
                raise
            except OSError as exc:
                raise Unavailable(
                    f"log write of {key} in {d.path} failed: {exc}", outcome_unknown=True, key=key
                ) from exc

    def _put(self, d: LogDir, seq: int, name: str, key: str, data: bytes) -> None:
        if d.legacy and legacy_size(d.path / name):
            raise ObjectExists(f"object {key} already exists", key=key)
        at = self._locate(d, seq)
        if at is None:
            at = self._place_new(d, seq, key)
        seg, off = at
        if seq in seg.deleted:
            raise InvalidArgument(f"log key {key} was deleted; sequence numbers are not reused")
        written = seg.write_if_empty(off, data)
        if written is None:
            raise ObjectExists(f"object {key} already exists", key=key)
        if written != len(data):
            raise Unavailable(
                f"log write of {key} was short ({written} of {len(data)} bytes)",
                outcome_unknown=True,
                key=key,
            )
        nxt = d.written(seg, seq, off, len(data))
        if nxt is not None:
            self._maybe_refill(d, seg, nxt)

    def _place_new(self, d: LogDir, seq: int, key: str) -> tuple[Segment, int]:
        """Begin segment ``seq``: allowed when seq-1 ends its segment, or when no object
        precedes it at all (a new log, or one in the earlier layout)."""
        d.scan()
        i = bisect_right(d.firsts, seq) - 1
        prev = None
        if i >= 0:
            prev = d.segment(d.firsts[i])
            if not (
                seq - 1 in d.ends
                or (self._locate(d, seq - 1) is not None and d.next_slot(seq - 1) == "new")
            ):
                raise InvalidArgument(
                    f"log key {key} is not the next sequence number of {d.path} "
                    "(the log writes its sequence numbers in order)"
                )
        seg = self._new_segment(d, seq, prev)
        d.where[seq] = (seq, SLOT)
        return seg, SLOT

    def get(self, key: str) -> bytes:
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                legacy = read_legacy(d.path / name) if d.legacy else None
                if legacy is not None:
                    if not legacy:
                        raise ObjectNotFound(f"object {key} does not exist", key=key)
                    return legacy
                at = self._locate(d, seq)
                if at is None or seq in at[0].deleted:
                    raise ObjectNotFound(f"object {key} does not exist", key=key)
                data = at[0].read(at[1])
                if data is None:
                    raise ObjectNotFound(f"object {key} does not exist", key=key)
                return data
            except (ObjectNotFound, InvalidArgument):
                raise
            except OSError as exc:
                raise Unavailable(f"cannot read {key} in {d.path}: {exc}", key=key) from exc

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
            if len(name) == 20 and name.isdigit() and legacy_size(directory / name):
                seqs.add(int(name))
        seqs |= self._dir(directory).live_seqs()
        keys = [f"{base}{s:020d}" for s in sorted(seqs)]
        return [k for k in keys if k[len(base) :].startswith(name_part)]

    def delete(self, key: str) -> None:
        with self._lock:
            d, seq, name = self._seq_of(key)
            try:
                if d.legacy and legacy_size(d.path / name) is not None:
                    super().delete(key)
                    return
                at = self._locate(d, seq)
                if at is None:
                    return
                seg = at[0]
                seg.deleted.add(seq)
                d.where.pop(seq, None)
                d.drop_if_done(seg)
            except OSError as exc:
                raise Unavailable(f"cannot delete {key} in {d.path}: {exc}", key=key) from exc

    def put(self, key: str, data: bytes) -> None:
        raise InvalidArgument(
            "the log store takes only put_if_absent: log objects are never replaced"
        )

    def close(self) -> None:
        with self._lock:
            for d in self._dirs.values():
                for seg in d.segments.values():
                    os.close(seg.fd)
                d.segments.clear()
                if d.spare is not None:
                    unlink_quietly(d.spare[0])
                    d.spare = None
            self._dirs.clear()
            self._by_key.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, or never fully made
            pass
