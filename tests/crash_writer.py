"""A writer process for crash tests: writes batches until killed, printing each acknowledgement.

Usage: python -m tests.crash_writer URL FIRST_BATCH

Batch i (of row dicts when i is even, by column when odd) upserts rows with keys
i*100 .. i*100+n-1 and value "w<i>", and deletes key (i-3)*100 when i % 5 == 0. After a batch
is acknowledged (durable), it prints
"ack <i> <n> <ts>" and flushes stdout. Background freezes, buffer checkpoints and checkpoints
run with small thresholds so that a kill lands in any phase.
"""

from __future__ import annotations

import random
import sys

from dn import AlreadyExists, Engine, Settings


def main() -> None:
    url, first = sys.argv[1], int(sys.argv[2])
    settings = Settings(
        freeze_bytes=8_000,
        checkpoint_delta=40,
        log_delete_grace_s=0,
        background=True,
        background_interval_s=0.002,
    )
    eng = Engine.open(url, settings=settings)
    for ddl in (
        lambda: eng.create_database("db"),
        lambda: eng.create_table("db", "t", {"k": "int64", "v": "string"}, "k"),
    ):
        try:
            ddl()
        except AlreadyExists:
            pass
    rng = random.Random(first)
    i = first
    while True:
        n = rng.randint(1, 20)
        keys = [i * 100 + j for j in range(n)]
        deletes = [(i - 3) * 100] if i % 5 == 0 and i - 3 >= first else []
        if i % 2:  # rows and columns are logged differently: both are killed mid-way
            ts = eng.write_columns("db", "t", {"k": keys, "v": [f"w{i}"] * n}, deletes)
        else:
            ts = eng.write("db", "t", [{"k": k, "v": f"w{i}"} for k in keys], deletes)
        print(f"ack {i} {n} {ts}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
