"""The DN benchmark: our engine against SlateDB and Delta Lake, side by side, in one run.

Run ``python -m bench`` (full, under 30 minutes) or ``python -m bench --quick`` (under 3
minutes); ``--only local|delta|s3|cluster`` runs one group. See docs/benchmarks.md for how each
figure is measured and what bounds it.

Modules: :mod:`bench.harness` (figures, runs, progress), :mod:`bench.stores` (request-counting
store wrapper, moto S3 server), :mod:`bench.slate` (SlateDB workloads),
:mod:`bench.vs_slatedb` (parts 2 and 5), :mod:`bench.vs_delta` (part 3), :mod:`bench.cluster`
(part 4), :mod:`bench.report` (JSON, chart, table).
"""
