"""The shared workload and reference-model checker of the reliability trials.

Workload. Batch ``i`` of a trial with seed ``s`` is a pure function of ``(s, i)``: it upserts
a few keys of a small key space (so later batches overwrite earlier ones) with value
``v = "b<i>"`` and ``n`` = the row's position, and deletes a few other keys. Every batch has at
least one upsert, so the marker ``b<i>`` in the change feed says which batch a change came
from, and at which timestamp it landed. A crashed writer therefore only has to report which
batches it *tried* and which were *acknowledged* (with their timestamps).

Check. After a crash, a fault storm or a zombie race, :func:`check` reads the change feed of
the recovered shard and decides, batch by batch:

- an acknowledged batch must be there, at exactly its acknowledged timestamp (else *lost*);
- no batch may appear at two timestamps (else *applied twice*);
- a batch that was tried but not acknowledged is there entirely, at one timestamp, or not at
  all; one marked ``forbidden`` (a fenced zombie's write after the fence) must not be there;
- nothing else is there.

It then builds the reference model (:mod:`tests.model`) from the batches found and compares
snapshot reads (full and key-range scans, gets) and range reads (the change feed between two
timestamps) at random timestamps with it, and any reads recorded earlier (reads made during a
fault storm, checked once the truth is known).

Not here: driving engines (the trial modules do), counting faults (``Tally``).

Callers: the trial modules, from one thread.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dn import Engine, NotFound
from tests.model import Model
from tests.trials.tally import Tally, TrialFailure

DB, TABLE = "db", "t"
SCHEMA = {"k": "int64", "v": "string", "n": "int64"}
COLUMNS = tuple(SCHEMA)


@dataclass(frozen=True)
class Workload:
    """Deterministic batches for one seed (see the module docstring)."""

    seed: int
    keys: int = 200
    max_rows: int = 12

    def batch(self, i: int) -> tuple[list[dict], list[int]]:
        rng = random.Random(self.seed * 1_000_003 + i)
        n = rng.randint(1, self.max_rows)
        keys = rng.sample(range(self.keys), n + rng.randint(0, 3))
        ups = [{"k": k, "v": f"b{i}", "n": j} for j, k in enumerate(keys[:n])]
        return ups, keys[n:]

    def write(self, eng: Engine, i: int) -> int:
        ups, dels = self.batch(i)
        return eng.write(DB, TABLE, ups, dels)


def create_table(eng: Engine) -> int:
    """The trials' database and table; returns the table's commit timestamp."""
    eng.create_database(DB)
    return eng.create_table(DB, TABLE, SCHEMA, "k")


@dataclass
class History:
    """What a trial's writers were told: acknowledged batches (with their timestamps), batches
    tried without an answer, and batches that must never become visible."""

    acked: dict[int, int] = field(default_factory=dict)
    tried: set[int] = field(default_factory=set)
    forbidden: set[int] = field(default_factory=set)
    reads: list[tuple[int, list[dict]]] = field(default_factory=list)

    def merge(self, other: History) -> None:
        self.acked.update(other.acked)
        self.tried |= other.tried
        self.forbidden |= other.forbidden
        self.reads += other.reads


def _batch_of(row: dict | None) -> int | None:
    v = None if row is None else row.get("v")
    if isinstance(v, str) and v.startswith("b") and v[1:].isdigit():
        return int(v[1:])
    return None


def check(
    eng: Engine, work: Workload, hist: History, tally: Tally, rng: random.Random, reads: int = 6
) -> Model:
    """Check ``eng`` against ``hist`` (see the module docstring); returns the model."""
    eng._check()
    tally.add("acked_writes_checked", len(hist.acked))
    try:
        create_ts = eng.table(DB, TABLE).create_ts
    except NotFound:
        if hist.acked:
            tally.add("writes_lost", len(hist.acked))
            raise TrialFailure(f"table lost although {len(hist.acked)} writes were acked") from None
        return Model()
    feed = list(eng.changes(DB, TABLE, 0))
    found: dict[int, set[int]] = {}
    for c in feed:
        i = _batch_of(c.row) if c.kind == "upsert" else None
        if c.kind == "upsert":
            if i is None:
                raise TrialFailure(f"change {c} carries no batch marker")
            found.setdefault(i, set()).add(c.ts)
    problems = []
    lost = [i for i, ts in hist.acked.items() if ts not in found.get(i, ())]
    twice = [i for i, stamps in found.items() if len(stamps) > 1]
    tally.add("writes_lost", len(lost))
    tally.add("applied_twice", len(twice))
    if lost:
        problems.append(
            f"{len(lost)} acknowledged batches lost, e.g. "
            f"{[(i, hist.acked[i]) for i in sorted(lost)[:5]]}"
        )
    if twice:
        problems.append(
            f"{len(twice)} batches applied twice, e.g. "
            f"{[(i, sorted(found[i])) for i in sorted(twice)[:5]]}"
        )
    stray = sorted(i for i in found if i not in hist.tried and i not in hist.acked)
    if stray:
        problems.append(f"batches nobody wrote are visible: {stray[:5]}")
    zombie = sorted(i for i in found if i in hist.forbidden)
    if zombie:
        problems.append(f"writes made after a fence are visible: {zombie[:5]}")
    if problems:
        raise TrialFailure("; ".join(problems))

    model = Model()
    model.create(TABLE, create_ts, ("k",), COLUMNS)
    landed = sorted((min(stamps), i) for i, stamps in found.items())
    for ts, i in landed:
        ups, dels = work.batch(i)
        model.write(TABLE, ts, ups, dels)
    now = eng.snapshot()
    want = model.changes(TABLE, 0, now)
    got = [(c.ts, c.kind, c.pk, c.row) for c in feed]
    if got != want:
        diff = next(((g, w) for g, w in zip(got, want) if g != w), (len(got), len(want)))
        raise TrialFailure(
            f"change feed differs from the model (batches partly applied?): first difference {diff}"
        )

    stamps = [create_ts] + [ts for ts, _ in landed] + [now]
    for _ in range(reads):
        s = rng.choice(stamps) - rng.choice([0, 0, 1])
        if s < create_ts:
            s = create_ts
        _compare_reads(eng, work, model, rng, s, rng.choice([st for st in stamps if st <= s]))
    for s, rows in hist.reads:
        if s >= create_ts and rows != model.rows(TABLE, s):
            raise TrialFailure(f"a read at {s} made during the trial returned wrong rows")
    return model


def _compare_reads(
    eng: Engine, work: Workload, model: Model, rng: random.Random, s: int, from_ts: int
) -> None:
    rows = model.rows(TABLE, s)
    got = list(eng.scan(DB, TABLE, snapshot=s))
    if got != rows:
        raise TrialFailure(f"snapshot read at {s}: {len(got)} rows, model has {len(rows)}")
    lo, hi = sorted(rng.sample(range(work.keys + 1), 2))
    part = [r for r in rows if lo <= r["k"] < hi]
    if list(eng.scan(DB, TABLE, snapshot=s, start=lo, end=hi)) != part:
        raise TrialFailure(f"key-range read [{lo}, {hi}) at {s} differs from the model")
    by_key = {r["k"]: r for r in rows}
    for k in rng.sample(range(work.keys), 3):
        if eng.get(DB, TABLE, k, snapshot=s) != by_key.get(k):
            raise TrialFailure(f"get({k}) at {s} differs from the model")
    got_c = [(c.ts, c.kind, c.pk, c.row) for c in eng.changes(DB, TABLE, from_ts, snapshot=s)]
    if got_c != model.changes(TABLE, from_ts, s):
        raise TrialFailure(f"range read ({from_ts}, {s}] differs from the model")
