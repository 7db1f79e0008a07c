"""Golden fixtures: one small object of every stored format, made by the project's own encoders.

``tests/test_formats.py`` checks that today's code encodes the inputs below to exactly the
bytes checked in here, decodes them to the values it expects, and re-encodes what it decoded to
the same bytes. This script writes the fixtures (into this directory, or the one given); only
a person runs it, never a test::

    python -m tests.golden.make [DIR]

When regenerating is legitimate: only with a deliberate change of a stored format, made the
way docs/formats.md says formats change (a new format version of the kind, written from then
on, with the reader still accepting every version already in stores; the fixture of the old
version kept, renamed, and still read by a test), or a deliberate change of the inputs below.
The same change updates docs/formats.md, the grammar in the encoder's module docstring and the
expected values in tests/test_formats.py. Never regenerate to make a failing test pass: a
golden test that fails says the engine now writes, or reads, other bytes than it did; unless
that was the point of the change, the code is wrong, not the fixture.

Not written here: ``checkpoint_v1_no_sizes.bin`` and ``checkpoint_v1_sizes.bin``, checkpoints of
format version 1 made once from the inputs below by the version-1 encoder as it stood before
range sizes were recorded (ranges ``[from, to]``) and as it stood last (``[from, to, bytes]``);
and ``range_v1.bin``, the range object below as the version-1 encoder made it (before ranges
recorded their commits); and ``range_v2.bin``, as the version-2 encoder made it (before range
bodies were compressed); and ``range_v3.bin``, as the version-3 encoder made it (before range
objects held their tables as Arrow IPC); and ``range_v4.bin``, as the version-4 encoder made it
(before each table's streams were cut into parts; this small object's are one part either way,
so only the version differs); and ``manifest_v1.bin``, the manifest version below
as the version-1 encoder made it (before manifests carried the timestamp ceiling); and
``checkpoint_v2.bin``, the checkpoint below as the version-2 encoder made it (before
checkpoints carried idempotency tokens). They are records of what stores may still hold, kept
as they are: today's code writes newer versions of these kinds and cannot make them again.

The write at 106 comes in two forms: as ``Engine.write_columns`` logs it (op 5,
``log_write_columns.bin``; the segments hold this one) and as the engine logs a client's part
carrying the idempotency token ``TOKEN`` (op 6, ``log_write_columns_token.bin``). The range
object and the checkpoint are made from the second form, so they carry that token.

Everything here is fixed: shard 7, epoch 2, timestamps 100-108, log sequence numbers 5-14. No
clock, no randomness (the log segments are written to a temporary directory, and only their
bytes are kept).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from coordinator.actor.cluster_catalog import ClusterCatalog
from dn.catalog import (
    OP_PREPARE,
    OP_WRITE,
    OP_WRITE_COLUMNS,
    OP_WRITE_COLUMNS_TOKEN,
    WRITE_OPS,
    Catalog,
)
from dn.moves import IN, OUT, Group, Move
from dn.objects import checkpoint as ckpt
from dn.objects import codec, decision, rangeobj
from dn.objects.manifest import Manifest, ManifestState
from dn.store.locallog import LocalLogStore
from dn.store.memory import MemoryStore
from dn.write.buffer import Buffer
from dn.write.log import Log, encode_command
from dn.write.tokens import make_token

HERE = Path(__file__).resolve().parent

SHARD = 7
EPOCH = 2
FENCE_SEQ = 5  # the log's low sequence number when this epoch opened: its fence record
RANGE_FROM = 90  # the previous range object ended at 89
CHECKPOINT_TS = 108
LOG_LOW_SEQ = 15  # every record below is in the range object
CEILING = 65_644  # the manifest's timestamp ceiling: 108 plus a millisecond of timestamps
CLUSTER_SHARDS = 4
CLUSTER_HASH = "crc32-msgpack-v1"
CLUSTER_CREATED_MS = 1_767_225_600_000
SEGMENT_BYTES = (2048, 4096)  # min_segment, max_segment of the local log store
#: The size the checkpoints record for their one range: that of range_v1.bin, the range object
#: when they were made. Fixed, so that a new range format leaves the checkpoint fixtures as
#: they are (checkpoint_v1_sizes.bin records the same size).
RANGE_BYTES = 857

SCHEMA_T = {"k": "int64", "v": "string", "blob": "bytes", "ok": "bool"}
SCHEMA_U = {"a": "string", "b": "int64", "x": "float64"}

#: The group commits after the fence, one command each (the engine logs a DDL alone):
#: (seq, ts, op, args). Writes are filled in by :func:`commands` (table ids are create ts).
DDL = [
    (6, 100, 1, ["shop"]),
    (7, 101, 3, ["shop", "t", [list(c) for c in SCHEMA_T.items()], ["k"]]),
    (8, 102, 3, ["shop", "u", [list(c) for c in SCHEMA_U.items()], ["a", "b"]]),
    (9, 103, 1, ["old"]),
    (10, 104, 3, ["old", "gone", [["id", "int64"]], ["id"]]),
    (13, 107, 4, ["old", "gone"]),
    (14, 108, 2, ["old"]),
]
#: A write of rows (op 0) to shop.t: upserts as row dicts, deletes as keys.
ROWS = [
    {"k": 2, "v": "two", "blob": bytes(range(256)) * 2, "ok": True},
    {"k": 1, "v": "one", "ok": False},
]
ROWS_DELETES = [9]
#: A write by column (op 5) to shop.u, in two chunks (as a client packs a batch in parts).
CHUNKS = [{"a": ["m", "a"], "b": [2, 1], "x": [0.5, -1.5]}, {"a": ["m"], "b": [1], "x": [None]}]
CHUNKS_DELETES = [("q", 3)]
#: The idempotency token of the write at 106 in its op-6 form: client id 0x00..0x0f, minted at
#: 2026-01-01T00:00:00Z, the client's first token.
TOKEN = make_token(bytes(range(16)), 1_767_225_600_000, 1)

#: The log fixtures checked in: file name -> seq.
LOG_FILES = {
    "log_fence.bin": 5,
    "log_create_database.bin": 6,
    "log_create_table.bin": 8,
    "log_write_rows.bin": 11,
    "log_write_columns.bin": 12,
    "log_drop_table.bin": 13,
    "log_drop_database.bin": 14,
}
#: The op-6 form of the write at 106 (seq 12), checked in beside the op-5 one.
TOKEN_LOG_FILE = "log_write_columns_token.bin"
#: The write at 106 as a transaction's intent on this shard (op 7, seq 12), with the token as
#: the transaction's, and the decision objects of that transaction: committed at 106 by a
#: client whose transaction wrote shards 0 and 7, and aborted by a reader of shard 7.
PREPARE_LOG_FILE = "log_prepare.bin"
DECISIONS = {"decision_commit.bin": (106, [7, 0]), "decision_abort.bin": (0, [7])}
#: The same intent sent in a client's group of transactions (op 7 naming the group), and the
#: group's decision: the group is keyed by its first transaction's token (GROUP), which
#: committed at 105; this one (TOKEN) committed at 106; a third (OTHER) was aborted.
GROUP = make_token(bytes(range(16)), 1_767_225_600_000, 0)
OTHER = make_token(bytes(range(16)), 1_767_225_600_000, 2)
PREPARE_GROUP_LOG_FILE = "log_prepare_group.bin"
GROUP_DECISION_FILE = "decision_group.bin"
GROUP_DECISION = ({GROUP: 105, TOKEN: 106, OTHER: 0}, [7, 0, 3])


def commands(token: bool = False) -> list[tuple[int, int, int, list]]:
    """Every command after the fence as ``(seq, ts, op, args)``, its arguments as the engine
    makes them (``Engine._ddl``, ``Engine._prepare_write``, ``Engine.write_columns``; with
    ``token``, the write at 106 as ``Engine.write_packed_columns`` logs a part carrying
    ``TOKEN``: op 6)."""
    cat = Catalog()
    for _, ts, op, args in DDL:
        if ts < 105:
            cat.apply([op, *args], ts)
    t = cat.live_table("shop", "t")
    u = cat.live_table("shop", "u")
    rows = [list(r) for r in t.normalize_rows(ROWS, 1 << 20)]
    dels = t.normalize_deletes(ROWS_DELETES)
    chunks = [u.normalize_columns(c, 1 << 20)[0] for c in CHUNKS]
    udels = [list(k) for k in u.normalize_deletes(CHUNKS_DELETES)]
    by_column = (
        (12, 106, OP_WRITE_COLUMNS_TOKEN, [u.id, chunks, udels, TOKEN])
        if token
        else (12, 106, OP_WRITE_COLUMNS, [u.id, chunks, udels])
    )
    writes = [(11, 105, OP_WRITE, [t.id, rows, dels]), by_column]
    return sorted(DDL + writes)


def log_record(seq: int, cmds: list[tuple[int, int, list]], epoch: int = EPOCH) -> bytes:
    """The log object ``seq`` as :class:`dn.write.log.Log` writes it: a fence record when
    ``cmds`` is empty, else one group commit of ``(ts, op, args)``."""
    store = MemoryStore()
    log = Log(store, SHARD, epoch)
    log.recover(seq)
    if cmds:
        log.append([encode_command(ts, op, codec.pack(args)) for ts, op, args in cmds], cmds[-1][0])
    else:
        log.fence()
    return store.get(codec.log_key(SHARD, seq))


def log_records() -> dict[int, bytes]:
    """seq -> log object, for every seq from the fence on."""
    out = {FENCE_SEQ: log_record(FENCE_SEQ, [])}
    for seq, ts, op, args in commands():
        out[seq] = log_record(seq, [(ts, op, args)])
    return out


def buffer_of(
    cmds: list[tuple[int, int, int, list]],
    from_ts: int = RANGE_FROM,
    tokens: dict[int, bytes] | None = None,
) -> Buffer:
    """A frozen buffer holding ``cmds`` (``(seq, ts, op, args)``) as recovery replays them
    (``WritePath._apply_command``); ``tokens`` (ts -> token) adds tokens to writes of other
    ops than 6."""
    cat = Catalog()
    buf = Buffer(from_ts, 0.0)
    tokens = dict(tokens or {})
    for _, ts, op, args in cmds:
        if op in WRITE_OPS:
            if op == OP_WRITE_COLUMNS_TOKEN:
                table_id, rows, dels, tokens[ts] = args
            else:
                table_id, rows, dels = args
            tdef = cat.table_by_id(table_id)
            if len(tdef.pk_pos) > 1:
                dels = [tuple(k) for k in dels]
            apply = buf.apply_write if op == OP_WRITE else buf.apply_columns
            apply(ts, table_id, len(tdef.columns), tdef.pk_pos, rows, dels, 0)
            if ts in tokens:
                buf.note_token(ts, tokens[ts])
        else:
            cmd = [op, *args]
            cat.apply(cmd, ts)
            buf.apply_ddl(ts, cmd, 0)
    buf.freeze()
    return buf


def range_object(token: bool = True) -> tuple[bytes, dict[int, rangeobj.TableStats]]:
    """The range object ``[90, 108]`` of every command after the fence, and its statistics
    (with ``token``, the write at 106 in its op-6 form: the fixture)."""
    return rangeobj.build(SHARD, buffer_of(commands(token)))


def checkpoint_catalog() -> dict:
    cat = Catalog()
    for _, ts, op, args in DDL:
        cat.apply([op, *args], ts)
    return cat.as_of(CHECKPOINT_TS)


def checkpoint_object() -> bytes:
    """The checkpoint at 108 over the one range object ``[90, 108]`` of ``RANGE_BYTES``, with
    the token of the write at 106 (inside the token window)."""
    _, stats = range_object()
    r = (RANGE_FROM, CHECKPOINT_TS)
    return ckpt.build(
        SHARD,
        CHECKPOINT_TS,
        checkpoint_catalog(),
        [r],
        {r: stats},
        {r: RANGE_BYTES},
        [(106, TOKEN)],
    )


#: Two slot moves of shard 7 (dn.moves): slots 3-5 and 9 given to shard 2 at 107 (map version
#: 4, done), then slot 9 taken back from shard 2 at 108 (map version 5, pending), with shard
#: 2's objects and table ids.
MOVES = (
    Move(4, OUT, 2, 16, frozenset({3, 4, 5, 9}), 107, True,
         (Group(frozenset({3, 4, 5, 9}), ((SHARD, RANGE_FROM, CHECKPOINT_TS, 0, 107),)),)),
    Move(5, IN, 2, 16, frozenset({9}), 108, False,
         (Group(frozenset({9}), ((SHARD, RANGE_FROM, CHECKPOINT_TS, 0, 107),
                                 (2, 100, 108, 107, 108))),),
         ((2, 101, 103),)),
)  # fmt: skip
#: The checkpoint floor of the settled manifest fixture (``manifest_settled.bin``).
SETTLED_FLOOR = 99


def manifest_version(moves: bool = False, settled: bool = False) -> bytes:
    """Manifest version 3: epoch 1 opened (version 1), epoch 2 opened (version 2), then epoch
    2 committed the range object, the checkpoint, the log's new low seq and its timestamp
    ceiling (version 3); with ``moves``, and :data:`MOVES` (format version 3); ``settled``:
    their in move absorbed and a checkpoint floor (format version 4)."""
    store = MemoryStore()
    Manifest(store, SHARD).open_epoch()
    m = Manifest(store, SHARD)
    m.open_epoch()

    def update(s: ManifestState) -> ManifestState:
        return replace(
            s,
            ranges=((RANGE_FROM, CHECKPOINT_TS),),
            checkpoints=(CHECKPOINT_TS,),
            log_low_seq=LOG_LOW_SEQ,
            ceiling=CEILING,
            moves=(
                tuple(
                    replace(m, done=True, absorbed=True, groups=()) if m.kind == "in" else m
                    for m in MOVES
                )
                if settled
                else MOVES
                if moves
                else ()
            ),
            checkpoint_floor=SETTLED_FLOOR if settled else 0,
        )

    state = m.commit(update)
    return store.get(codec.manifest_key(SHARD, state.version))


def cluster_record(slots: bool = True) -> bytes:
    """Cluster record version 6: created (1), database shop (2, 3), table shop.t (4, 5), and
    the creation of shop.u pending (6). Without ``slots``: as a record made before slot maps
    (versions 2 to 6 carry none)."""
    store = MemoryStore()
    cat = ClusterCatalog(store)
    cat.open(CLUSTER_SHARDS, CLUSTER_HASH, CLUSTER_CREATED_MS)
    if not slots:
        assert cat.state is not None
        cat.state.slots = None
    cat.begin("create_database", DDL[0][3])
    cat.finish()
    cat.begin("create_table", DDL[1][3])
    cat.finish()
    state = cat.begin("create_table", DDL[2][3])
    assert state["seq"] == 3
    return store.get(f"90/cluster/{codec.num(6)}")


#: The step of :func:`cluster_step`: shards 0 and 1 each give slots to shard 2 (map v2).
CLUSTER_STEP = {
    "id": 2,
    "parts": [
        {"id": 1, "from": 0, "to": 2, "slots": [[0, 0], [4, 4]]},
        {"id": 2, "from": 1, "to": 2, "slots": [[1, 1]]},
    ],
}


def cluster_step() -> bytes:
    """Cluster record version 8, format 2: :func:`cluster_record`'s version 6 with the pending
    DDL finished and then the intent of a step of two parts (:data:`CLUSTER_STEP`) begun."""
    store = MemoryStore()
    store.put(f"90/cluster/{codec.num(6)}", cluster_record())
    cat = ClusterCatalog(store)
    cat.open(CLUSTER_SHARDS, CLUSTER_HASH, CLUSTER_CREATED_MS)
    cat.finish()
    assert cat.next_move_id() == 1
    cat.begin_move(CLUSTER_STEP)
    return store.get(f"90/cluster/{codec.num(8)}")


def segments(objects: dict[int, bytes]) -> dict[str, bytes]:
    """The segment files of a local log directory holding ``objects`` (seq -> log object):
    file name -> bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalLogStore(tmp, min_segment=SEGMENT_BYTES[0], max_segment=SEGMENT_BYTES[1])
        try:
            for seq in sorted(objects):
                store.put_if_absent(codec.log_key(SHARD, seq), objects[seq])
        finally:
            store.close()
        folder = Path(tmp) / "30" / str(SHARD)
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.seg"))}


def build_all() -> dict[str, bytes]:
    """Every fixture this script writes: file name -> bytes."""
    logs = log_records()
    out = {name: logs[seq] for name, seq in LOG_FILES.items()}
    token_write = [c for c in commands(token=True) if c[2] == OP_WRITE_COLUMNS_TOKEN]
    out[TOKEN_LOG_FILE] = log_record(token_write[0][0], [c[1:] for c in token_write])
    _, ts, _, (table_id, chunks, dels, token) = token_write[0]
    out[PREPARE_LOG_FILE] = log_record(12, [(ts, OP_PREPARE, [token, [[table_id, chunks, dels]]])])
    grouped = [token, [[table_id, chunks, dels]], GROUP]
    out[PREPARE_GROUP_LOG_FILE] = log_record(12, [(ts, OP_PREPARE, grouped)])
    for name, (decided, shards) in DECISIONS.items():
        out[name] = decision.encode(decided, shards)
    out[GROUP_DECISION_FILE] = decision.encode_group(*GROUP_DECISION)
    out["range.bin"] = range_object()[0]
    out["checkpoint.bin"] = checkpoint_object()
    out["manifest.bin"] = manifest_version()
    out["manifest_moves.bin"] = manifest_version(moves=True)
    out["manifest_settled.bin"] = manifest_version(settled=True)
    out["cluster.bin"] = cluster_record(slots=False)
    out["cluster_slots.bin"] = cluster_record()
    out["cluster_step.bin"] = cluster_step()
    for name, data in segments(logs).items():
        out[f"segment_{int(name.removesuffix('.seg'))}.bin"] = data
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else HERE
    for name, data in build_all().items():
        (target / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
