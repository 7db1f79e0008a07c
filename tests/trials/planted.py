"""Planted objects: malformed, truncated and misplaced objects put into a shard's store behind
its back (DESIGN.md §5 promises 4 and 5).

One trial (one seed) builds a shard with ranges, checkpoints, manifest versions and a log
tail, closes it, and plants one bad object: over an existing manifest version, checkpoint,
range or log object, or at a new key the shard would read next (the next manifest version or
log sequence number). The bad bytes are a truncation (down to zero bytes), a flipped bit in
the header or the body, random bytes, a well-framed object of another kind, a well-framed
object of the right kind whose body is malformed, or another valid object of the same kind.

Then a new incarnation opens the shard and reads everything: first a streaming scan
(``scan_batches``, which reads range objects of format 5 part by part with ranged reads, each
part checked by its own checksum), then scans and change feeds at the timestamps the model
knows, then the streamed rows against a whole scan. Allowed outcomes:

- a typed :class:`dn.Corruption` that names the planted key (then the planted bytes must
  still be there, untouched: the evidence is not destroyed); or
- success with exactly the model's data (the object was rightly ignored: a torn newest log
  object or manifest version is a failed write, an unreferenced object is garbage).

Anything else — wrong data, an untyped exception, a Corruption naming another key — fails.

Not here: faults while the engine runs (:mod:`tests.trials.faults`).
"""

from __future__ import annotations

import random

import pyarrow as pa

from dn import Corruption, DNError, Engine, ManualClock, NotFound
from dn.objects import codec, rangecols
from dn.store import MemoryStore
from tests.trials.checker import DB, TABLE, History, Workload, check, create_table
from tests.trials.crash_child import crash_settings
from tests.trials.tally import Tally, TrialFailure

KINDS = {
    "00/": codec.KIND_MANIFEST,
    "10/": codec.KIND_CHECKPOINT,
    "20/": codec.KIND_RANGE,
    "30/": codec.KIND_LOG,
}
HOW = ("truncate", "flip-header", "flip-body", "random", "other-kind", "bad-body", "swap")
BAD_BODIES = [
    None,
    0,
    [],
    {},
    [1, 2, 3],
    {"ranges": "x"},
    {"from": 1},
    [1, 0, [[1, 2]]],
    [1, 0, [[1, 1, [99, [[1]], []]]]],
    [1, 0, [["x", 1, []]]],
    "junk",
]


def _build(seed: int, rng: random.Random) -> tuple[MemoryStore, Workload, History]:
    store = MemoryStore(f"planted-{seed}")
    work = Workload(seed)
    hist = History()
    eng = Engine.open(store=store, settings=crash_settings(), clock=ManualClock())
    create_table(eng)
    for i in range(rng.randint(10, 60)):
        hist.tried.add(i)
        hist.acked[i] = work.write(eng, i)
        if rng.random() < 0.15:
            eng.freeze()
            eng.flush()
        if rng.random() < 0.05:
            eng.checkpoint()
    eng.close()
    return store, work, hist


def _bad_bytes(store: MemoryStore, key: str, prefix: str, how: str, rng: random.Random) -> bytes:
    old = store.get(key) if key in store.snapshot() else None
    peers = [k for k in store.list(prefix) if k != key]
    if old is None:  # a new key: start from a valid object of the same kind
        old = store.get(rng.choice(peers)) if peers else codec.encode(KINDS[prefix], [])
    if how == "truncate":
        return old[: rng.randrange(len(old))]
    if how in ("flip-header", "flip-body"):
        data = bytearray(old)
        lo, hi = (0, codec.HEADER_SIZE) if how == "flip-header" else (codec.HEADER_SIZE, len(old))
        if hi <= lo:
            lo, hi = 0, len(old)
        at = rng.randrange(lo, hi)
        data[at] ^= 1 << rng.randrange(8)
        return bytes(data)
    if how == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if how == "other-kind":
        other = rng.choice([k for k in KINDS.values() if k != KINDS[prefix]])
        return codec.frame(other, old[codec.HEADER_SIZE :])
    if how == "bad-body":
        return codec.encode(KINDS[prefix], rng.choice(BAD_BODIES))
    return store.get(rng.choice(peers)) if peers else old  # swap: another valid object


def _read_all(eng: Engine, work: Workload, hist: History, tally: Tally, rng: random.Random) -> None:
    streamed = None
    try:
        eng.table(DB, TABLE)
    except NotFound:
        pass  # check() says whether the table may be missing
    else:  # before anything fills the cache: ranged reads
        streamed = list(eng.scan_batches(DB, TABLE, batch_rows=rng.choice([3, 50, 65_536])))
    check(eng, work, hist, tally, rng, reads=4)
    if streamed is not None:
        whole = eng.scan_arrow(DB, TABLE)
        if not pa.Table.from_batches(streamed, whole.schema).equals(whole):
            raise TrialFailure("scan_batches (parts by ranged reads) differs from scan_arrow")


def run(seed: int, long: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    bound = rangecols.CHUNK_ROWS
    rangecols.CHUNK_ROWS = rng.choice([4, 16, bound])  # range objects of many parts, or one
    try:
        store, work, hist = _build(seed, rng)
    finally:
        rangecols.CHUNK_ROWS = bound
    prefix = rng.choice(sorted(KINDS))
    keys = store.list(f"{prefix}0/")
    if keys and rng.random() < 0.7:
        key = rng.choice(keys)
    elif prefix == "00/":
        key = codec.manifest_key(0, codec.last_number(keys[-1]) + 1)
    elif prefix == "30/":
        key = codec.log_key(0, codec.last_number(keys[-1]) + 1 if keys else 0)
    elif prefix == "10/":
        key = codec.checkpoint_key(0, 10**6)  # an orphan: never referenced
    else:
        key = codec.range_key(0, 10**6, 10**6 + 5)
    how = rng.choice(HOW)
    bad = _bad_bytes(store, key, prefix, how, rng)
    torn = how == "truncate" or (how == "random" and len(bad) < codec.HEADER_SIZE)
    if torn and prefix == "30/" and key in store.snapshot():
        # a log object cut short (or shorter than a header) is indistinguishable from a torn,
        # failed put (decision 0003): recovery may skip it, so its batches are not promised
        rec = codec.decode(codec.KIND_LOG, store.get(key), key)
        stamps = {c[0] for c in rec[2]}
        for i, ts in list(hist.acked.items()):
            if ts in stamps:
                del hist.acked[i]
    store.put(key, bad)
    tally.add("malformed_inputs")
    stats = tally.kind("planted")
    what = f"{how} at {key}"
    try:
        eng = Engine.open(store=store, settings=crash_settings(), clock=ManualClock())
        try:
            _read_all(eng, work, hist, tally, rng)
        finally:
            eng.close()
    except Corruption as exc:
        if exc.key != key:
            raise TrialFailure(
                f"{what}: Corruption names {exc.key}, not the planted key: {exc}"
            ) from exc
        if store.get(key) != bad:
            raise TrialFailure(f"{what}: the corrupt object was changed after detection") from exc
        stats["detected"] = stats.get("detected", 0) + 1
        return
    except TrialFailure as exc:
        raise TrialFailure(f"{what}: read as data: {exc}") from exc
    except DNError as exc:
        raise TrialFailure(f"{what}: {type(exc).__name__} rather than Corruption: {exc}") from exc
    except Exception as exc:
        raise TrialFailure(f"{what}: untyped {type(exc).__name__}: {exc}") from exc
    stats["ignored, data intact"] = stats.get("ignored, data intact", 0) + 1
