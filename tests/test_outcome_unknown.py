"""Regression tests: an error after an attempt that may have landed is an unknown outcome, never
a definite failure (DESIGN.md promise 8; finding 2 of the reliability issue).

The finding: a log put lands but its response is lost; the retry gets a non-retryable error (a
403 of expired credentials). The writer got ``InvalidArgument`` without ``outcome_unknown``,
the write was invisible, every later write failed with ``Internal`` (the next put met the
landed object), and after a restart the "failed" write appeared. Fixed in two places: the
retrying store reports any failure after a maybe-landed attempt as
``Unavailable(outcome_unknown=True)``, and the log treats any exception of its writes so, and
settles it (``Log.resolve``) before the next write or a read at a later timestamp.

Faults come from :class:`dn.store.FaultyStore`: ``lost_ack`` (the put lands, its answer is lost)
then ``denied`` (a definite ``InvalidArgument``, as a 403).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dn import Engine, InvalidArgument, ManualClock, Settings, Unavailable
from dn.store import FaultyStore, LocalStore, MemoryStore, ObjectStore, RetryingStore, RetryPolicy
from dn.store.locallog import LocalLogStore
from tests.fakes import PassThroughStore

SCHEMA = {"k": "int64", "v": "string"}
LOG = "30/"


def _settings() -> Settings:
    return Settings(background=False, freeze_interval_s=None, checkpoint_interval_s=None)


def _retrying(store: ObjectStore) -> RetryingStore:
    return RetryingStore(store, RetryPolicy(max_attempts=4, sleep=lambda s: None))


class Shard:
    """One shard whose log writes go through a FaultyStore, on memory or on local segments."""

    def __init__(self, where: str, tmp_path: Path, *, retry: bool = True) -> None:
        self.where = where
        if where == "memory":
            self.data: ObjectStore = MemoryStore()
            self.logs: ObjectStore = self.data
        else:
            self.data = LocalStore(tmp_path)
            self.logs = LocalLogStore(tmp_path)
        self.faulty = FaultyStore(self.logs)
        wrap: Callable[[ObjectStore], ObjectStore] = _retrying if retry else (lambda s: s)
        self.eng = Engine.open(
            store=wrap(self.data if where != "memory" else self.faulty),
            log_store=wrap(self.faulty),
            settings=_settings(),
            clock=ManualClock(),
        )
        self.eng.create_database("db")
        self.eng.create_table("db", "t", SCHEMA, "k")

    def reopen(self) -> Engine:
        """Close the shard and open it again from what is stored, without faults."""
        self.eng.close()
        if isinstance(self.data, LocalStore):
            return Engine.open(self.data.root, settings=_settings(), clock=ManualClock())
        return Engine.open(store=self.data, settings=_settings(), clock=ManualClock())


def _keys(eng: Engine) -> list[int]:
    return [r["k"] for r in eng.scan("db", "t")]


def _stamps(eng: Engine, k: int) -> list[int]:
    return [c.ts for c in eng.changes("db", "t", 0) if c.pk == k and c.kind == "upsert"]


@pytest.mark.parametrize("where", ["memory", "segments"])
@pytest.mark.parametrize("then", ["write", "read"])
def test_a_log_put_that_landed_then_was_refused_on_retry_is_an_unknown_outcome(
    where: str, then: str, tmp_path: Path
) -> None:
    shard = Shard(where, tmp_path)
    eng = shard.eng
    shard.faulty.add_rule("put_if_absent", LOG, kind="lost_ack", count=1)
    shard.faulty.add_rule("put_if_absent", LOG, kind="denied", count=1)
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 1, "v": "landed"}])
    assert err.value.outcome_unknown
    assert isinstance(err.value.__cause__, Unavailable)  # the retrying store's unknown outcome
    assert isinstance(err.value.__cause__.__cause__, InvalidArgument)  # the refusal
    assert str(err.value.details["cause"]).startswith("InvalidArgument(")
    assert eng.status()["state"] == "settling"
    if then == "read":  # a read at a later snapshot settles it: the landed write is there
        assert _keys(eng) == [1]
    ts = eng.write("db", "t", [{"k": 2, "v": "later"}])  # later writes succeed
    assert eng.status()["state"] == "open"
    assert _keys(eng) == [1, 2]
    assert len(_stamps(eng, 1)) == 1 and _stamps(eng, 1)[0] < ts
    eng.write("db", "t", [{"k": 3, "v": "after"}])
    first = _stamps(eng, 1)
    again = shard.reopen()
    try:  # after a restart: the same rows, the landed write at the same timestamp, once
        assert _keys(again) == [1, 2, 3]
        assert _stamps(again, 1) == first
    finally:
        again.close()


@pytest.mark.parametrize("where", ["memory", "segments"])
def test_a_refused_log_put_without_a_retrying_store_is_settled_not_internal(
    where: str, tmp_path: Path
) -> None:
    """The log alone: a store error that is not Unavailable still leaves the outcome to be
    settled; here the put did not land, so the write never appears."""
    shard = Shard(where, tmp_path, retry=False)
    eng = shard.eng
    shard.faulty.add_rule("put_if_absent", LOG, kind="denied", count=1)
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 1, "v": "refused"}])
    assert err.value.outcome_unknown
    assert isinstance(err.value.__cause__, InvalidArgument)
    eng.write("db", "t", [{"k": 2, "v": "later"}])
    assert _keys(eng) == [2]
    again = shard.reopen()
    try:
        assert _keys(again) == [2]
    finally:
        again.close()


class LandsThenFails(PassThroughStore):
    """A log store whose n-th put_if_absent lands and then raises an untyped error (a client
    library's exception after the request went out)."""

    def __init__(self, inner: ObjectStore, nth: int) -> None:
        super().__init__(inner)
        self.left = nth

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        self.left -= 1
        if self.left == 0:
            raise ConnectionResetError("connection reset by peer after the request was sent")


def test_any_exception_of_a_log_put_that_landed_is_settled_and_applied_once() -> None:
    data = MemoryStore()
    eng = Engine.open(store=data, settings=_settings(), clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.close()
    # the opening's fence record is the first put, the write's log record the second
    eng = Engine.open(
        store=data, log_store=LandsThenFails(data, 2), settings=_settings(), clock=ManualClock()
    )
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 1, "v": "landed"}])
    assert err.value.outcome_unknown
    assert isinstance(err.value.__cause__, ConnectionResetError)
    eng.write("db", "t", [{"k": 2, "v": "later"}])
    assert _keys(eng) == [1, 2] and len(_stamps(eng, 1)) == 1
    eng.close()
    again = Engine.open(store=data, settings=_settings(), clock=ManualClock())
    try:
        assert _keys(again) == [1, 2] and len(_stamps(again, 1)) == 1
    finally:
        again.close()


def test_a_refused_skip_record_keeps_the_log_unknown() -> None:
    """Settling writes a skip record; if that put is refused after an attempt that may have
    landed, the writer gets an unknown outcome and the next leader settles again."""
    shard = Shard("memory", Path("."))
    eng = shard.eng
    shard.faulty.add_rule("put_if_absent", LOG, kind="error", count=4)  # every attempt fails
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 1, "v": "not written"}])
    assert err.value.outcome_unknown  # the log cannot tell; it settles before the next write
    shard.faulty.add_rule("put_if_absent", LOG, kind="lost_ack", count=1)  # the skip lands
    shard.faulty.add_rule("put_if_absent", LOG, kind="denied", count=1)
    with pytest.raises(Unavailable) as err:
        eng.write("db", "t", [{"k": 2, "v": "not written"}])
    assert err.value.outcome_unknown
    assert eng.status()["state"] == "settling"
    eng.write("db", "t", [{"k": 3, "v": "later"}])  # finds its skip record, and goes on
    assert _keys(eng) == [3]
    again = shard.reopen()
    try:
        assert _keys(again) == [3]
    finally:
        again.close()


def test_a_fence_record_that_landed_then_was_refused_fails_the_opening_as_unknown() -> None:
    data = MemoryStore()
    eng = Engine.open(store=data, settings=_settings(), clock=ManualClock())
    eng.create_database("db")
    eng.create_table("db", "t", SCHEMA, "k")
    eng.write("db", "t", [{"k": 1, "v": "a"}])
    eng.close()
    faulty = FaultyStore(data)
    faulty.add_rule("put_if_absent", LOG, kind="lost_ack", count=1)
    faulty.add_rule("put_if_absent", LOG, kind="denied", count=1)
    with pytest.raises(Unavailable) as err:
        Engine.open(
            store=data, log_store=_retrying(faulty), settings=_settings(), clock=ManualClock()
        )
    assert err.value.outcome_unknown
    again = Engine.open(store=data, settings=_settings(), clock=ManualClock())
    try:
        again.write("db", "t", [{"k": 2, "v": "b"}])
        assert _keys(again) == [1, 2]
    finally:
        again.close()


# -- the retrying store alone -----------------------------------------------------------------


@pytest.mark.parametrize("op", ["put", "put_if_absent"])
def test_retrying_store_reports_a_refusal_after_a_lost_ack_as_an_unknown_outcome(op: str) -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule(op, kind="lost_ack", count=1)
    faulty.add_rule(op, kind="denied", count=1)
    store = _retrying(faulty)
    with pytest.raises(Unavailable) as err:
        getattr(store, op)("k", b"v")
    assert err.value.outcome_unknown and err.value.retryable
    assert isinstance(err.value.__cause__, InvalidArgument)
    assert "InvalidArgument" in str(err.value.details["cause"])
    assert faulty.inner.get("k") == b"v"  # it had landed


def test_retrying_store_reports_an_untyped_error_after_a_lost_ack_as_an_unknown_outcome() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put", kind="lost_ack", count=1)
    calls = []

    def reset(op: str, key: str) -> None:
        calls.append(op)
        if len(calls) == 2:
            raise ConnectionResetError("connection reset")

    faulty.on_op = reset
    with pytest.raises(Unavailable) as err:
        _retrying(faulty).put("k", b"v")
    assert err.value.outcome_unknown
    assert isinstance(err.value.__cause__, ConnectionResetError)


def test_retrying_store_keeps_a_first_refusal_definite() -> None:
    """Guard (passes before and after the fix): with no earlier attempt that may have landed,
    a refusal is what it says, and is not retried."""
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put_if_absent", kind="denied", count=1)
    store = _retrying(faulty)
    with pytest.raises(InvalidArgument):
        store.put_if_absent("k", b"v")
    assert store.stats["attempts"] == 1
    assert faulty.inner.list("") == []
