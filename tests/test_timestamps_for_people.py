"""Snapshots and change-feed starts given as times: an aware datetime or an ISO-8601 string
(dn.timestamps), on the engine and through the client's conversions, with typed errors for a
time without a UTC offset or a string that is no time."""

from __future__ import annotations

import datetime as dt

import pytest

from dn import Engine, InvalidArgument, ManualClock, Settings
from dn.clock import LOGICAL_BITS
from dn.timestamps import time_of, to_timestamp

T0 = dt.datetime(2026, 12, 6, 7, 30, 0, tzinfo=dt.UTC)
MS0 = int(T0.timestamp() * 1000)


def test_a_time_names_its_millisecond_last_for_a_snapshot_first_for_a_feed():
    last = ((MS0 + 1) << LOGICAL_BITS) - 1
    assert to_timestamp(T0) == last
    assert to_timestamp("2026-12-06T07:30:00Z") == last
    assert to_timestamp("2026-12-06T08:30:00+01:00") == last
    assert to_timestamp(T0, first=True) == MS0 << LOGICAL_BITS
    assert to_timestamp(123) == 123
    assert time_of(to_timestamp(T0)) == T0
    assert time_of(to_timestamp("2026-12-06T07:30:00.123456Z")) == T0 + dt.timedelta(
        milliseconds=123
    )


@pytest.mark.parametrize(
    "bad",
    [
        "2026-12-06T07:30:00",
        dt.datetime(2026, 12, 6, 7, 30),
        "yesterday",
        "1969-12-31T00:00Z",
        "5",
    ],
)
def test_a_time_without_an_offset_or_not_a_time_is_a_typed_error(bad):
    with pytest.raises(InvalidArgument):
        to_timestamp(bad)


def test_engine_reads_at_times(tmp_path):
    clock = ManualClock(ms=MS0)
    eng = Engine.open(str(tmp_path), settings=Settings(retention_s=None), clock=clock)
    try:
        eng.create_database("db")
        eng.create_table("db", "t", {"k": "int64", "v": "string"}, "k")
        clock.advance(1.0)  # 07:30:01
        eng.write("db", "t", [{"k": 1, "v": "one"}])
        clock.advance(1.0)  # 07:30:02
        eng.write("db", "t", [{"k": 2, "v": "two"}])
        at = T0.isoformat()
        assert [r["k"] for r in eng.scan("db", "t", snapshot="2026-12-06T07:30:01.500Z")] == [1]
        assert [r["k"] for r in eng.scan("db", "t", snapshot=T0 + dt.timedelta(seconds=2))] == [
            1,
            2,
        ]
        assert eng.get("db", "t", 2, snapshot="2026-12-06T07:30:01Z") is None
        feed = list(eng.changes("db", "t", from_ts="2026-12-06T07:30:02Z"))
        assert [c.pk for c in feed] == [2]
        assert [c.pk for c in eng.changes("db", "t", from_ts=at)] == [1, 2]
        with pytest.raises(InvalidArgument, match="UTC offset"):
            list(eng.scan("db", "t", snapshot="2026-12-06T07:30:01"))
        with pytest.raises(InvalidArgument, match="from_ts"):
            list(eng.changes("db", "t", from_ts="soon"))
    finally:
        eng.close()
