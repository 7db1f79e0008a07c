"""One directory of the local log store: its segment files and where each sequence number is.

Where seq N lives follows from the objects before it, the same for every process that reads
them: the first seq of a segment is in slot 1 (offset SLOT); seq N+1 is in the slot after N's
object (its length is in its verified frame header) in the same segment, unless that slot is at
or past the segment's ``capacity``, or N is torn, and then seq N+1 is the first seq of a new
segment named N+1. So a torn object is always the last one of its segment. The file format is
:mod:`dn.store.logsegment`.

A :class:`LogDir` caches what it has learnt: the open segments, the slot of every seq located so
far (and of the slot after the last located object), and the seqs whose successor begins a new
segment. What it knows is never wrong for a segment file that exists: objects are only added
after the last one, and a segment file is removed only once all its seqs are deleted.

Files of the earlier layout (one file per seq, named by the 20-digit seq; empty = absent) are
read by :func:`legacy_size` and :func:`read_legacy`.

Callers: :class:`dn.store.locallog.LocalLogStore` only, which holds its lock around every call
(a LogDir is not thread-safe itself).
"""

from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path

from dn.objects.codec import HEADER, HEADER_SIZE
from dn.store.files import fsync_dir
from dn.store.logsegment import (
    SLOT,
    ZERO_FILL_BELOW,
    ZERO_HEAD,
    Segment,
    align,
    frame_size,
    make_spare,
    segment_first,
    segment_name,
)


class LogDir:
    """What the store knows of one log directory (see the module docstring)."""

    __slots__ = (
        "path",
        "legacy",
        "segments",
        "firsts",
        "where",
        "ends",
        "sizes",
        "spare",
        "filling",
    )

    def __init__(self, path: Path, legacy: bool) -> None:
        self.path = path
        self.legacy = legacy  # files of the earlier layout (a file per seq) are here
        self.segments: dict[int, Segment] = {}
        self.firsts: list[int] = []  # first seqs of the segment files, ascending
        # seq -> (segment first seq, offset) for every slot located so far, and for the slot
        # after the last located object; ends: seqs whose successor starts a new segment
        self.where: dict[int, tuple[int, int]] = {}
        self.ends: set[int] = set()
        self.sizes: list[int] = []  # sizes of recent objects (what the next segment is for)
        self.spare: tuple[Path, int] | None = None  # (path, capacity) of a ready spare
        self.filling = False

    def scan(self) -> None:
        """Learn the segment files that exist now."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        firsts = set(self.firsts)
        for name in names:
            first = segment_first(name)
            if first is not None:
                firsts.add(first)
        self.firsts = sorted(firsts)

    def segment(self, first: int) -> Segment | None:
        """The open segment whose first seq is ``first``, or None if there is no such file."""
        seg = self.segments.get(first)
        if seg is not None:
            return seg
        seg = Segment.open(first, self.path / segment_name(first))
        if seg is None:
            return None
        self.segments[first] = seg
        if first not in self.firsts:
            self.firsts.insert(bisect_right(self.firsts, first), first)
        return seg

    def locate(self, seq: int) -> tuple[Segment, int] | None:
        """The slot of ``seq`` (its segment and offset), or None when it is in no segment: no
        chain of objects reaches it (a gap after the last object, or no segment before it), or
        it would begin a segment that does not exist yet."""
        at = self.where.get(seq)
        if at is None and (seq - 1) in self.ends:
            at = (seq, SLOT)
        if at is None:
            at = self._walk_to(seq)
            if at is None:
                return None
        seg = self.segment(at[0])
        if seg is None:
            self.where.pop(seq, None)
            return None
        self.where[seq] = at
        return seg, at[1]

    def _walk_to(self, seq: int) -> tuple[int, int] | None:
        """Follow the chain of objects from the start of the segment that can hold ``seq``
        (or from seq-1, when its slot is known) up to ``seq``; every slot passed is recorded."""
        if (seq - 1) in self.where:
            cur = seq - 1
        else:
            self.scan()
            i = bisect_right(self.firsts, seq) - 1
            if i < 0:
                return None
            cur = self.firsts[i]
            self.where.setdefault(cur, (cur, SLOT))
        while cur < seq:
            if self.segment(self.where[cur][0]) is None:
                return None
            nxt = self.next_slot(cur)
            if nxt is None:
                return None  # cur's slot is empty: nothing after it is written yet
            cur += 1
            if nxt == "new":
                if self.segment(cur) is None:
                    return None
                self.where[cur] = (cur, SLOT)
        return self.where[seq]

    def next_slot(self, seq: int) -> str | None:
        """Record where seq+1 goes, from seq's object (seq's slot must be recorded): "same" (a
        slot of seq's segment, recorded in ``where``), "new" (it begins a segment), or None when
        seq's slot is empty."""
        if seq in self.ends:
            return "new"
        if seq + 1 in self.where:
            return "same"
        first, off = self.where[seq]
        seg = self.segment(first)
        assert seg is not None
        head = seg.pread(HEADER_SIZE, off, shared=True)
        if len(head) < HEADER_SIZE or head == ZERO_HEAD:
            return None
        size = frame_size(head)
        nxt = None if size is None else align(off + size)
        if size is None or nxt >= seg.capacity or seg.torn_cut(off, size) is not None:
            self.ends.add(seq)
            return "new"
        self.where[seq + 1] = (first, nxt)
        return "same"

    def written(self, seg: Segment, seq: int, off: int, size: int) -> int | None:
        """Record that ``seq``'s object of ``size`` bytes now sits at ``off`` of ``seg``; the
        offset of the slot after it, or None when seq+1 begins a new segment."""
        self.sizes = [*self.sizes[-15:], size]
        nxt = align(off + size)
        if nxt >= seg.capacity:
            self.ends.add(seq)
            return None
        self.where[seq + 1] = (seg.first, nxt)
        return nxt

    def live_seqs(self) -> set[int]:
        """Every seq in a chain of objects of the segment files, less the deleted ones."""
        seqs: set[int] = set()
        self.scan()
        for first in self.firsts:
            seg = self.segment(first)
            if seg is None:
                continue
            self.where.setdefault(first, (first, SLOT))
            cur = first
            while True:
                nxt = self.next_slot(cur)
                if nxt is None:
                    break  # an empty slot: the chain ends
                if cur not in seg.deleted:
                    seqs.add(cur)
                if nxt == "new":
                    break
                cur += 1
        return seqs

    def drop_if_done(self, seg: Segment) -> None:
        """Remove ``seg``'s file once a later segment exists and every seq in it is deleted."""
        i = self.firsts.index(seg.first)
        if i + 1 >= len(self.firsts):
            return
        count = self.firsts[i + 1] - seg.first
        if len(seg.deleted) < count:
            return
        os.close(seg.fd)
        del self.segments[seg.first]
        self.firsts.pop(i)
        for s in range(seg.first, seg.first + count):
            self.where.pop(s, None)
            self.ends.discard(s)
        os.unlink(seg.path)
        fsync_dir(self.path)

    def make_spare(self, capacity: int) -> tuple[Path, int]:
        """A spare file of ``capacity`` (see :func:`dn.store.logsegment.make_spare`), zero-filled
        while the recent objects are small."""
        small = not self.sizes or max(self.sizes) < ZERO_FILL_BELOW
        return make_spare(self.path, capacity, zero_fill=small)


def legacy_size(path: Path) -> int | None:
    """The size of ``path`` if it is a file of the earlier layout (a file per seq), else
    None."""
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_legacy(path: Path) -> bytes | None:
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
            return data[: HEADER_SIZE + length]
    return data
