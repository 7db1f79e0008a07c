"""Recovery of one shard: from the manifest, the newest checkpoint, the ranges and the log.

Steps (seed 001 and 003)::

    manifest: open a new writer epoch (fences every older incarnation)
    newest checkpoint -> catalog, live ranges and their statistics, idempotency tokens
    ranges after it   -> catalog changes (DDL), statistics, commit counts, tokens
    log records after the newest range -> replayed through the write path's apply step
                         (which notes the tokens of op 6)
    fence the log (a record no stale incarnation can write past), advance the clock to the
    manifest's timestamp ceiling (decision 0013) and above every timestamp seen

Runs once, from :meth:`dn.engine.Engine.open`, before any other thread uses the shard.
Progress goes to the log every 100 ranges and every 1,000 log objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dn.catalog import Catalog
from dn.objects import rangeobj
from dn.objects.rangecols import ArrowTable
from dn.state import ShardState
from dn.write.buffer import Buffer
from dn.write.log import Log, LogRecord
from dn.write.tokens import unpack_entries

log = logging.getLogger(__name__)


def recover(s: ShardState, replay: Callable[[LogRecord], None]) -> None:
    """Open a new epoch of the shard in the manifest and rebuild memory: the catalog and
    statistics from the newest checkpoint and the ranges after it, then the log's records
    after the newest range, each applied once (``replay``: the write path's)."""
    state = s.manifest.open_epoch()
    s.epoch = state.epoch
    log.info("shard %d: opened epoch %d (manifest version %d)", s.shard, state.epoch, state.version)
    after = 0
    floor = s.tokens.floor(s.clock.now_ms())  # tokens older than the window are not kept
    if state.checkpoints:
        cp = s.reader.checkpoint(state.checkpoints[-1])
        s.catalog = Catalog.from_dict(cp.catalog)
        for r in cp.ranges:
            s.stats[r] = {}
            s.sizes[r] = cp.sizes.get(r, 0)
        for table_id, entries in cp.tables.items():
            for r, st in entries:
                s.stats.setdefault(r, {})[table_id] = st
        s.tokens.load(unpack_entries(cp.tokens), floor)
        after = cp.ts
    later = [r for r in state.ranges if r[1] > after]
    for i, r in enumerate(later):
        ro = s.reader.range(r)
        for ts, cmd in ro.commands:
            s.catalog.apply(cmd, ts)
        s.stats[r] = _range_stats(ro, s.catalog)
        s.sizes[r] = ro.nbytes
        s.commits[r] = ro.ncommits  # what the checkpoint trigger counts
        s.tokens.load(unpack_entries(ro.tokens), floor)
        if (i + 1) % 100 == 0:
            log.info("shard %d: recovery read %d/%d ranges", s.shard, i + 1, len(later))
    s.ranges = list(state.ranges)
    s.checkpoints = list(state.checkpoints)
    s.set_moves_locked(state.moves)  # slot moves (dn.moves)
    s.undone = frozenset(state.undone)
    max_range = state.max_range or 0
    s.last_applied = max(max_range, state.checkpoints[-1] if state.checkpoints else 0)
    s.mutable = Buffer(max_range + 1, s.clock.monotonic(), s.mirror_room)
    s.log = Log(s.log_store, s.shard, state.epoch)
    records = s.log.recover(state.log_low_seq, s.clock.monotonic() + s.settings.log_delete_grace_s)
    for i, rec in enumerate(records):
        replay(rec)
        if (i + 1) % 1000 == 0:
            log.info("shard %d: replayed %d/%d log objects", s.shard, i + 1, len(records))
    for rec in s.log.fence():
        replay(rec)
    # Every timestamp an older incarnation issued or promised (a snapshot it served) is at or
    # below the ceiling of the version just superseded, which the new epoch's version keeps;
    # the clock starts there whatever this node's wall clock says (dn.upkeep.ceiling).
    s.ceiling = state.ceiling
    s.hlc.advance(max(s.last_applied, state.ceiling))
    log.info(
        "shard %d: recovered: %d ranges, %d checkpoints, %d log objects replayed, clock at %d",
        s.shard,
        len(s.ranges),
        len(s.checkpoints),
        len(records),
        s.hlc.last,
    )
    s._check()


def _range_stats(ro: rangeobj.RangeObject, catalog: Catalog) -> dict[int, rangeobj.TableStats]:
    """Each table's statistics in ``ro``: from the Arrow tables of a version-4 object with a
    one-column key (their counts, and the first and last keys of their sorted key columns),
    else from the table's run (Python values)."""
    out = {}
    for table_id in ro.table_ids:
        pk_pos = catalog.table_by_id(table_id).pk_pos
        stored = ro.arrow(table_id)
        if stored and len(pk_pos) == 1:
            out[table_id] = _arrow_stats(stored, pk_pos[0])
            continue
        run = ro.run(table_id, pk_pos)
        keys = ([run.pks[0], run.pks[-1]] if run.pks else []) + (
            [run.del_pks[0], run.del_pks[-1]] if run.del_pks else []
        )
        out[table_id] = rangeobj.TableStats.spanning(len(run.ts), len(run.del_ts), keys)
    return out


def _arrow_stats(stored: ArrowTable, kpos: int) -> rangeobj.TableStats:
    rows, dels = stored.rows(), stored.dels()
    keys = []
    for tb, col in ((rows, kpos), (dels, 0)):
        if tb is not None and tb.num_rows:
            k = tb.column(col)
            keys += [k[0].as_py(), k[-1].as_py()]
    nrows, ndels = rows.num_rows, 0 if dels is None else dels.num_rows
    return rangeobj.TableStats.spanning(nrows, ndels, keys)
