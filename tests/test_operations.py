"""Operations without Ray: typed errors for bad environment settings, and ``dn status``'s
human-readable sizes."""

from __future__ import annotations

import pytest

from coordinator.cli.statusview import render_shard, size_text
from coordinator.config import load_config
from dn.errors import InvalidArgument


def test_a_bad_shard_count_in_the_environment_is_a_typed_error_naming_the_variable():
    """Regression: DN_SHARDS=x raised a bare ValueError the dn command did not catch."""
    with pytest.raises(InvalidArgument, match="DN_SHARDS='x'") as info:
        load_config(None, environ={"DN_SHARDS": "x"})
    assert info.value.details["variable"] == "DN_SHARDS"
    assert load_config(None, environ={"DN_SHARDS": "3"}).shards == 3


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12 * 1024**2, "12.0 MiB"),
        (3 * 1024**3 + 200 * 1024**2, "3.2 GiB"),
        (5 * 1024**5, "5120.0 TiB"),
        (None, "?"),
    ],
)
def test_sizes_read_as_people_write_them(n, text):
    assert size_text(n) == text


def test_dn_status_shows_sizes_not_raw_byte_counts():
    shard = {
        "epoch": 3,
        "state": "open",
        "buffers": [
            {"frozen": False, "from": 1, "to": None, "commits": 2, "rows": 5, "bytes": 3 * 1024**2}
        ],
        "queue_length": 1,
        "queue_bytes": 256 * 1024**2,
        "ranges": [],
        "checkpoints": [],
        "log": {"live_objects": 1, "low_seq": 0, "next_seq": 1, "bytes_written": 2048},
        "objects": {
            "live_ranges": 2,
            "live_range_bytes": 5 * 1024**3,
            "live_checkpoints": 1,
            "awaiting_gc": 0,
            "deleted_by_gc": 0,
            "compaction_debt": 0,
            "compaction_bound": 4,
        },
    }
    text = "\n".join(render_shard(0, shard))
    for size in ("3.0 MiB", "256.0 MiB", "2.0 KiB written", "5.0 GiB"):
        assert size in text
    assert " B;" not in text and "3145728" not in text


def test_secrets_are_refused_in_the_actors_environment():
    """A runtime environment is shown to anyone who can list tasks or open the dashboard."""
    ok = load_config({"env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}}, environ={})
    assert ok.env == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DB_PASSWORD", "RAY_AUTH_TOKEN"):
        with pytest.raises(InvalidArgument, match=name):
            load_config({"env": {name: "x"}}, environ={})


def test_read_tasks_get_where_the_store_is_never_credentials():
    """Regression: the client copied every AWS_* variable, the secret key included, into the
    runtime environment of its read tasks."""
    from coordinator.client.tasks import store_env

    environ = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    assert store_env(environ) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_dn_status_watch_shows_rates_per_shard():
    from coordinator.cli.statusview import rates

    def shard(rows: int, commits: int, logged: int) -> dict:
        return {
            "counters": {"rows_written": rows},
            "commits": commits,
            "log": {"bytes_written": logged},
        }

    prev = {"shards": {"0": shard(1000, 10, 4096), "1": {"error": "down"}}}
    cur = {"shards": {"0": shard(3000, 30, 4096 + 2 * 1024**2), "1": shard(5, 1, 10)}}
    lines = rates(prev, cur, 2.0)
    assert lines[0] == "rates over the last 2.0 s:"
    assert lines[1] == "  shard 0: 1,000 rows/s, 10 commits/s, 1.0 MiB/s logged"
    assert lines[2] == "  shard 1: -"
