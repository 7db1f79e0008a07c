"""Tests of the store wrappers: RetryingStore (backoff, give-up, outcome-unknown) and FaultyStore
(each injected fault does what it says, deterministically). Injected sleep/clock: instant.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest

from dn.errors import (
    Corruption,
    DNError,
    InvalidArgument,
    ObjectExists,
    ObjectNotFound,
    Unavailable,
)
from dn.store import (
    FaultyStore,
    LocalStore,
    MemoryStore,
    ObjectStore,
    RetryingStore,
    RetryPolicy,
    SimulatedCrash,
)
from tests.fakes import SleepClock

NO_RETRY = RetryPolicy(max_attempts=1)
BAD_KEYS = ["", "/a", "a//b", "a/../b", "..", "a/./b", "a\\b", "a/", ".tmp-x", "a/.tmp-1"]


# -- RetryingStore --------------------------------------------------------------------------------


def _retrying(inner: ObjectStore, **kw: Any) -> tuple[RetryingStore, SleepClock]:
    rec = SleepClock()
    policy = RetryPolicy(sleep=rec.sleep, clock=rec.clock, rng=random.Random(1), **kw)
    return RetryingStore(inner, policy), rec


def test_retry_retries_unavailable_then_succeeds() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put", kind="error", count=3)
    store, rec = _retrying(faulty)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert store.stats == {"attempts": 5, "retries": 3, "failures": 0}
    caps = [0.02, 0.04, 0.08]
    assert len(rec.sleeps) == 3 and all(0 <= s <= c for s, c in zip(rec.sleeps, caps, strict=True))


def test_retry_gives_up_after_max_attempts() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("get", kind="error")
    store, rec = _retrying(faulty, max_attempts=4)
    with pytest.raises(Unavailable) as info:
        store.get("k")
    assert not info.value.outcome_unknown
    assert store.stats == {"attempts": 4, "retries": 3, "failures": 1}
    assert len(rec.sleeps) == 3


def test_retry_gives_up_at_deadline() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule(kind="error")
    store, rec = _retrying(
        faulty, max_attempts=1000, base_delay_s=1.0, max_delay_s=1.0, deadline_s=5
    )
    with pytest.raises(Unavailable):
        store.list("")
    assert rec.now <= 5.0 and store.stats["attempts"] < 1000


class Raising:
    """A store whose every operation raises ``error`` and counts calls."""

    url = "raising://"

    def __init__(self, error: DNError) -> None:
        self.error, self.calls = error, 0

    def _raise(self, *args: object) -> Any:
        self.calls += 1
        raise self.error

    get = put = put_if_absent = list = delete = _raise

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error",
    [ObjectExists("x"), ObjectNotFound("x"), InvalidArgument("x"), Corruption("x", key="k")],
    ids=lambda e: type(e).__name__,
)
def test_retry_never_retries_definite_errors(error: DNError) -> None:
    inner = Raising(error)
    store, rec = _retrying(inner)
    with pytest.raises(type(error)):
        store.put_if_absent("k", b"v")
    assert inner.calls == 1 and rec.sleeps == []


def test_retry_keeps_outcome_unknown_from_any_attempt() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put", kind="lost_ack", count=1)
    faulty.add_rule("put", kind="error")
    store, _ = _retrying(faulty, max_attempts=3)
    with pytest.raises(Unavailable) as info:
        store.put("k", b"v")
    assert info.value.outcome_unknown  # the first attempt landed although the last did not
    assert faulty.inner.get("k") == b"v"


def test_retry_of_landed_put_if_absent_raises_object_exists() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put_if_absent", kind="lost_ack", count=1)
    store, _ = _retrying(faulty)
    with pytest.raises(ObjectExists):  # callers read back and compare, per the contract
        store.put_if_absent("k", b"v")
    assert store.get("k") == b"v"


def test_retrying_store_pickles(tmp_path) -> None:
    store = RetryingStore(LocalStore(tmp_path), RetryPolicy(max_attempts=2))
    store.put("k", b"v")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get("k") == b"v" and copy.policy.max_attempts == 2


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidArgument):
        RetryPolicy(deadline_s=0)


# -- FaultyStore ----------------------------------------------------------------------------------


def test_faulty_error_does_nothing() -> None:
    faulty = FaultyStore(MemoryStore())
    rule = faulty.add_rule("put", "20/", kind="error")
    with pytest.raises(Unavailable) as info:
        faulty.put("20/1", b"v")
    assert not info.value.outcome_unknown
    faulty.put("10/1", b"v")  # other prefix: untouched
    assert faulty.inner.snapshot() == {"10/1": b"v"}
    assert rule.fired == 1 and faulty.fired["error"] == 1


def test_faulty_lost_ack_performs_then_fails() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule("put_if_absent", kind="lost_ack")
    with pytest.raises(Unavailable) as info:
        faulty.put_if_absent("k", b"v")
    assert info.value.outcome_unknown
    assert faulty.inner.get("k") == b"v"


@pytest.mark.parametrize("op", ["put", "put_if_absent"])
def test_faulty_torn_write_stores_a_strict_prefix(op: str) -> None:
    faulty = FaultyStore(MemoryStore(), seed=3)
    faulty.add_rule(op, kind="torn")
    data = bytes(range(200))
    with pytest.raises(Unavailable) as info:
        getattr(faulty, op)("k", data)
    assert info.value.outcome_unknown
    stored = faulty.inner.get("k")
    assert len(stored) < len(data) and data.startswith(stored)


def test_faulty_latency_sleeps_then_performs() -> None:
    slept: list[float] = []
    faulty = FaultyStore(MemoryStore(), sleep=slept.append)
    faulty.add_rule("get", kind="latency", latency_s=0.25)
    faulty.put("k", b"v")
    assert faulty.get("k") == b"v" and slept == [0.25]


def test_faulty_stale_list_hides_newest_matching_key() -> None:
    faulty = FaultyStore(MemoryStore())
    for k in ["20/0003", "20/0001", "20/0002", "10/0009"]:
        faulty.put(k, b"")
    faulty.add_rule("list", "20/", kind="stale_list", count=1)
    assert faulty.list("") == ["10/0009", "20/0001", "20/0003"]  # 20/0002 was written last
    assert faulty.list("20/") == ["20/0001", "20/0002", "20/0003"]  # count exhausted


def test_faulty_count_and_clear_rules() -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.add_rule(kind="error", count=2)
    for _ in range(2):
        with pytest.raises(Unavailable):
            faulty.delete("k")
    faulty.delete("k")
    faulty.add_rule(kind="error")
    faulty.clear_rules()
    faulty.put("k", b"v")
    assert faulty.fired["error"] == 2


def _fault_pattern(seed: int) -> list[bool]:
    faulty = FaultyStore(MemoryStore(), seed=seed)
    faulty.add_rule("put", error_rate=0.5)
    pattern = []
    for i in range(64):
        try:
            faulty.put(f"k{i}", b"v")
            pattern.append(False)
        except Unavailable:
            pattern.append(True)
    return pattern


def test_faulty_is_deterministic_by_seed() -> None:
    assert _fault_pattern(7) == _fault_pattern(7)
    assert _fault_pattern(7) != _fault_pattern(8)
    assert 16 < sum(_fault_pattern(7)) < 48


@pytest.mark.parametrize("lands", [False, True])
def test_faulty_crash_after_is_sticky(lands: bool) -> None:
    faulty = FaultyStore(MemoryStore())
    faulty.crash_after(2, lands=lands)
    faulty.put("a", b"1")
    faulty.put("b", b"2")
    with pytest.raises(SimulatedCrash):
        faulty.put("c", b"3")
    with pytest.raises(SimulatedCrash):
        faulty.get("a")
    assert faulty.crashed
    assert sorted(faulty.inner.snapshot()) == (["a", "b", "c"] if lands else ["a", "b"])
    faulty.crash_after(None)
    assert faulty.get("a") == b"1"


def test_faulty_on_op_hook_can_crash_at_a_chosen_operation() -> None:
    class Boom(Exception):
        pass

    def hook(op: str, key: str) -> None:
        if op == "put_if_absent" and key.startswith("manifest/"):
            raise Boom(key)

    faulty = FaultyStore(MemoryStore())
    faulty.on_op = hook
    faulty.put("data/1", b"x")
    with pytest.raises(Boom):
        faulty.put_if_absent("manifest/2", b"m")
    assert faulty.inner.snapshot() == {"data/1": b"x"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "scan"},
        {"kind": "explode"},
        {"op": "get", "kind": "torn"},
        {"op": "put", "kind": "stale_list"},
        {"error_rate": 1.5},
    ],
)
def test_faulty_rejects_bad_rules(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        FaultyStore(MemoryStore()).add_rule(**kwargs)
