"""LocalLogStore: the log's objects on a local directory, one fdatasync per group commit.

The log (:mod:`dn.log`) writes one object per group commit with ``put_if_absent``. On a plain
:class:`~dn.store.local.LocalStore` that costs a temp file, its fsync, a link and a directory
fsync: two syncs and a file creation on every durable write. This store keeps the same
contract for the log's keys (``<prefix>/<20-digit seq>``) at the price of one ``fdatasync``:

- **Pre-created files.** The files of the next sequence numbers are created empty ahead of
  time, ``PREALLOCATE`` at once, with one directory fsync for the batch, on a background
  thread once half of the batch is used. A write goes only into a file whose directory entry
  is known to be durable; when none is ready the writer creates the batch itself. An empty
  file means *absent*: ``get`` raises ``ObjectNotFound`` and ``list`` skips it.
- **put_if_absent** opens the (pre-created, or newly created) file with ``O_APPEND``, writes
  the whole object in one ``write``, ``fdatasync``\\s it, and checks the file's size. Size equal
  to the object: this writer was alone, the put succeeded. Any other size: another writer
  appended too, and the put raises ``ObjectExists``; the log then reads the object back.
- **get** returns the first framed object in the file (:mod:`dn.codec` frames carry their
  length), so when two writers raced, every reader sees the one that came first. A file cut
  short by a crash returns its torn bytes, which the log treats as a failed write.

So concurrent writers of one key (a stale incarnation and its successor) have exactly one
winner, as with ``link``. ``put`` and ``delete`` behave as on LocalStore.

Who uses it: :meth:`dn.Engine.open` for the log when the log lives on a local directory. Not
for other keys: it knows the log's key layout.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

from dn.errors import InvalidArgument, ObjectExists, ObjectNotFound, Unavailable
from dn.store.local import LocalStore, _fsync_dir, check_key

log = logging.getLogger(__name__)

PREALLOCATE = 128
_HEADER = struct.Struct("<2sBBQ")  # magic, kind, version, body length (see dn.codec)
_HEADER_SIZE = 20


class LocalLogStore(LocalStore):
    """The log's store on a local directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        # directory -> highest sequence number whose file exists *and* whose directory entry
        # is fsynced; only those files may take a write that will be acknowledged
        self._ready: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._filling: set[Path] = set()

    def __repr__(self) -> str:
        return f"LocalLogStore({str(self.root)!r})"

    def _seq_path(self, key: str) -> tuple[Path, int]:
        path = self._path(key)
        try:
            return path, int(path.name)
        except ValueError:
            raise InvalidArgument(f"log key {key!r} does not end in a sequence number") from None

    def _preallocate(self, path: Path, seq: int) -> None:
        """Make sure the file of ``seq`` exists with a durable directory entry. Files ahead
        are created in batches, on a background thread once half the batch is used, so the
        write path normally only writes."""
        directory = path.parent
        with self._lock:
            ready = self._ready.get(directory, -1)
            refill = ready - seq < PREALLOCATE // 2 and directory not in self._filling
            if refill and ready >= seq:
                self._filling.add(directory)
        if ready < seq:
            self._fill(path, seq, seq + PREALLOCATE)  # nothing ready: the writer waits
        elif refill:
            threading.Thread(target=self._fill_in_background,
                             args=(path, ready + 1, ready + 2 * PREALLOCATE),
                             name="dn-log-preallocate", daemon=True).start()

    def _fill(self, path: Path, first: int, last: int) -> None:
        directory = path.parent
        self._make_parents(path)
        width = len(path.name)
        for s in range(first, last + 1):
            try:
                os.close(os.open(directory / f"{s:0{width}d}",
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                pass
        _fsync_dir(directory)
        with self._lock:
            self._ready[directory] = max(self._ready.get(directory, -1), last)

    def _fill_in_background(self, path: Path, first: int, last: int) -> None:
        try:
            self._fill(path, first, last)
        except OSError as exc:  # the write path creates what it needs itself
            log.warning("pre-creating log files in %s failed: %s", path.parent, exc)
        finally:
            with self._lock:
                self._filling.discard(path.parent)

    def put_if_absent(self, key: str, data: bytes) -> None:
        check_key(key)
        path, seq = self._seq_path(key)
        try:
            self._preallocate(path, seq)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                if os.fstat(fd).st_size:
                    raise ObjectExists(f"object {key} already exists", key=key)
                written = os.write(fd, data)
                os.fdatasync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except ObjectExists:
            raise
        except OSError as exc:
            raise Unavailable(f"log write to {path} failed: {exc}", outcome_unknown=True,
                              key=key) from exc
        if written != len(data) or size != len(data):
            raise ObjectExists(f"object {key} was written concurrently", key=key)

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if not data:
            raise ObjectNotFound(f"object {key} does not exist", key=key)
        if len(data) >= _HEADER_SIZE:
            length = _HEADER.unpack_from(data)[3]
            if len(data) > _HEADER_SIZE + length:
                return data[:_HEADER_SIZE + length]  # a racing writer's bytes came after
        return data

    def list(self, prefix: str) -> list[str]:
        out = []
        for key in super().list(prefix):
            try:
                if os.stat(self._path(key)).st_size:
                    out.append(key)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise Unavailable(f"cannot stat {key}: {exc}") from exc
        return out
