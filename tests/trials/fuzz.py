"""Fuzzed calls: hypothesis-generated malformed calls to every public function of the engine
(DESIGN.md §5 promise 5).

Every public method that takes arguments (and ``Engine.open``, ``Settings``,
``Settings.from_dict``) is called with arguments drawn, each on its own, from valid values and
from junk: bad names (wrong type, empty, too long, path-like, NUL), wrong types everywhere
(None, bool, floats, NaN, bytes, lists, dicts, tuples, locks, lambdas, generators), timestamps
that are negative, huge, in the future or before the retention window, oversized values and
batches over ``max_batch_rows`` or ``max_batch_bytes``, non-picklable values in rows.

Promises checked on each call: it either succeeds (the arguments happened to be valid; a
successful write must read back exactly) or raises a :class:`dn.DNError` subclass with a
message of at least a few words — never a bare ``TypeError``/``KeyError``/``AttributeError``;
after a rejected call the store's content is byte-identical (``MemoryStore.snapshot()``); the
engine stays open and its invariants hold (``_check``). Rejections count as malformed inputs.

Seeded: hypothesis runs derandomized from the trial's seed, so a failing seed reproduces.

Not here: malformed objects planted in the store (:mod:`tests.trials.planted`); the client
(:mod:`tests.trials.ray_trials`).
"""

from __future__ import annotations

import math
import threading
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from dn import DNError, Engine, ManualClock, Settings
from dn.store import MemoryStore
from tests.trials.tally import Tally, TrialFailure

SCHEMA = {"k": "int64", "s": "string", "f": "float64", "b": "bytes", "ok": "bool"}
LIMITS = dict(max_value_bytes=64, max_batch_rows=50, max_batch_bytes=3_000, retention_s=5.0)

_LOCK = threading.Lock()
ODD = [
    object(),
    lambda: 0,
    _LOCK,
    Ellipsis,
    float("nan"),
    float("inf"),
    -0.0,
    b"\xff",
    "\ud800",
    "x" * 300,
    "",
    " ",
    "a/b",
    "../x",
    "\x00",
    "é",
    1 << 63,
    -(1 << 63) - 1,
    1 << 70,
    True,
    False,
    None,
    [],
    {},
    (),
    set(),
]
junk = st.one_of(
    st.sampled_from(ODD),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.tuples(st.integers(), st.text(max_size=2)),
    st.builds(lambda n: (i for i in range(n)), st.integers(0, 3)),
)
keyish = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.tuples(st.integers()),
)  # hashable junk
names = st.one_of(st.sampled_from(["db", "t", "c", "nodb", "nope", "k", "s"]), junk)
value = st.one_of(
    st.none(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(),
    st.text(max_size=70),
    st.binary(max_size=70),
    st.booleans(),
    junk,
)
row = st.dictionaries(st.one_of(st.sampled_from(list(SCHEMA)), keyish), value, max_size=6)
rows = st.one_of(
    junk,
    st.lists(st.one_of(row, junk), max_size=5),
    st.lists(st.fixed_dictionaries({"k": st.integers(0, 10**6)}), min_size=51, max_size=80),
    st.builds(
        lambda n: [{"k": i, "s": "y" * 60, "b": b"z" * 60} for i in range(n)], st.integers(20, 45)
    ),
)
keys = st.one_of(
    junk,
    st.lists(st.one_of(st.integers(-(1 << 64), 1 << 64), junk), max_size=4),
    st.lists(st.integers(0, 10**6), min_size=51, max_size=60, unique=True),
)
columns = st.one_of(st.none(), junk, st.lists(names, max_size=3))
schema = st.one_of(
    junk,
    st.dictionaries(
        st.one_of(st.sampled_from(["k", "v"]), keyish),
        st.one_of(st.sampled_from(["int64", "string", "float64", "bytes", "bool", "int32"]), junk),
        max_size=3,
    ),
)


def _stamps(eng: Engine) -> st.SearchStrategy:
    now = eng.clock()
    oldest = eng.oldest_readable()
    return st.one_of(
        st.none(),
        junk,
        st.integers(-5, 5),
        st.just(now),
        st.just(1 << 62),
        st.integers(now + (120_000 << 16), 1 << 63),
        st.integers(1, max(1, oldest - 1)),
        st.integers(oldest, now),
    )


def _calls(eng: Engine) -> st.SearchStrategy:
    ts = _stamps(eng)
    a = st.fixed_dictionaries
    per_method: dict[str, Any] = {
        "write": a({"db": names, "table": names, "upserts": rows, "deletes": keys}),
        "get": a(
            {
                "db": names,
                "table": names,
                "pk": st.one_of(junk, st.integers()),
                "snapshot": ts,
                "columns": columns,
            }
        ),
        "scan": a(
            {
                "db": names,
                "table": names,
                "snapshot": ts,
                "columns": columns,
                "start": st.one_of(st.none(), junk),
                "end": st.one_of(st.none(), junk),
            }
        ),
        "changes": a(
            {"db": names, "table": names, "from_ts": ts, "snapshot": ts, "columns": columns}
        ),
        "read_view": a({"db": names, "table": names, "snapshot": ts, "from_ts": ts}),
        "create_database": a({"db": names}),
        "drop_database": a({"db": names}),
        "create_table": a(
            {
                "db": names,
                "table": names,
                "schema": schema,
                "primary_key": st.one_of(names, st.lists(names, max_size=3)),
            }
        ),
        "drop_table": a({"db": names, "table": names}),
        "databases": a({"snapshot": ts}),
        "tables": a({"db": names, "snapshot": ts}),
        "table": a({"db": names, "table": names, "snapshot": ts}),
        "advance_floor": a({"ts": ts}),
        "snapshot_plan": a({"ts": ts}),
        "range_plan": a({"snapshot": ts, "from_ts": ts}),
        "collect_garbage": a({"force": junk}),
    }
    return st.one_of(*[st.tuples(st.just(m), kw) for m, kw in per_method.items()])


def _populated() -> tuple[Engine, MemoryStore, ManualClock]:
    store = MemoryStore()
    clock = ManualClock(ms=1_000_000)
    eng = Engine.open(settings=Settings(background=False, **LIMITS), store=store, clock=clock)
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.create_table("db", "c", {"g": "string", "n": "int64"}, ["g", "n"])
    for i in range(6):
        eng.write("db", "t", [{"k": i, "s": f"r{i}"}])
        if i == 2:
            eng.freeze()
            eng.flush()
            eng.checkpoint()
        clock.advance(2.0)  # the first rows fall out of the 5 s retention window
    return eng, store, clock


def _materialize(out: Any) -> Any:
    if hasattr(out, "__next__"):
        return list(out)
    return out


def _check_write_read_back(eng: Engine, kw: dict, ts: int) -> None:
    if kw["table"] != "t" or not isinstance(kw["upserts"], list):
        return
    for r in kw["upserts"]:
        got = eng.get("db", "t", r["k"], snapshot=ts)
        for c in SCHEMA:
            want, have = r.get(c), (got or {}).get(c)
            if isinstance(want, float) and math.isnan(want) and math.isnan(have):
                continue
            if want != have or (want is not None and type(want) is bool) != (type(have) is bool):
                raise TrialFailure(f"write({kw!r:.200}) read back {got!r}")


def _one_call(eng: Engine, store: MemoryStore, method: str, kw: dict, tally: Tally) -> None:
    before = store.snapshot()
    try:
        out = _materialize(getattr(eng, method)(**kw))
    except DNError as exc:
        tally.add("malformed_inputs")
        msg = str(exc)
        if len(msg.split()) < 3:
            raise TrialFailure(f"{method}({kw!r:.200}): unclear message {msg!r}") from exc
        if store.snapshot() != before:
            raise TrialFailure(
                f"{method}({kw!r:.200}) was rejected ({exc}) but changed the store"
            ) from exc
    except Exception as exc:
        raise TrialFailure(
            f"{method}({kw!r:.300}) raised {type(exc).__name__}: {exc} — not a typed dn error"
        ) from exc
    else:
        if method == "write":
            _check_write_read_back(eng, kw, out)
    if eng.status()["state"] != "open":
        raise TrialFailure(f"{method}({kw!r:.200}) left the engine {eng.status()['state']}")
    eng._check()


def _open_call(kw: dict, tally: Tally) -> None:
    """Engine.open / Settings with junk: typed errors, and nothing created anywhere."""
    try:
        if "values" in kw:
            Settings.from_dict(kw["values"])
        else:
            Engine.open(**kw).close()
    except DNError:
        tally.add("malformed_inputs")
    except Exception as exc:
        raise TrialFailure(
            f"open/settings({kw!r:.300}) raised {type(exc).__name__}: {exc}"
        ) from exc


opens = st.one_of(
    # any other string is a valid relative directory; opening it would create it
    st.fixed_dictionaries(
        {
            "url": st.one_of(
                junk.filter(lambda u: not isinstance(u, str)),
                st.sampled_from(
                    [
                        "ftp://x",
                        "s3://",
                        "file://h/x",
                        "memory://?q=1",
                        "",
                        "   ",
                        "/tmp/\x00",
                        "\ud800",
                    ]
                ),
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "store": st.one_of(junk, st.builds(MemoryStore)),
            "shard_id": st.one_of(st.integers(-3, 3), junk),
            "settings": st.one_of(junk, st.none()),
            "clock": st.one_of(junk, st.builds(ManualClock)),
        }
    ),
    st.fixed_dictionaries(
        {
            "values": st.one_of(
                junk,
                st.dictionaries(
                    st.sampled_from(
                        [
                            "freeze_bytes",
                            "retention_s",
                            "gc_grace_s",
                            "compaction_fanout",
                            "queue_stop_bytes",
                            "nope",
                        ]
                    ),
                    junk,
                    max_size=3,
                ),
            )
        }
    ),
)


def run(trial_seed: int, long: bool, tally: Tally) -> None:
    eng, store, _ = _populated()
    examples = 1500 if long else 250

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @seed(trial_seed)
    @given(call=_calls(eng))
    def engine_calls(call: tuple[str, dict]) -> None:
        _one_call(eng, store, *call, tally)

    @settings(
        max_examples=examples // 5,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @seed(trial_seed)
    @given(kw=opens)
    def open_calls(kw: dict) -> None:
        _open_call(kw, tally)

    try:
        engine_calls()
        open_calls()
    finally:
        eng.close()
