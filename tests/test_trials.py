"""The CI mode of every reliability trial (tests/trials/, issue 5), under pytest.

Each engine-level kind runs its CI count of seeds (about 25 seconds in all; the transaction
kinds ``txn``, ``bank`` and ``clocks`` about 15 of them, each under 10 seconds); the Ray kind
runs one trial in the shared Ray session. The long mode and the published figures:
``python -m tests.trials --long`` and docs/reliability.md.
"""

from __future__ import annotations

import pytest

from tests.trials import REGISTRY
from tests.trials.__main__ import run_kind
from tests.trials.tally import Tally

ENGINE_KINDS = [k for k, spec in REGISTRY.items() if not spec.long_only]


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_ci_trials(kind):
    tally = Tally()
    run_kind(kind, 0, REGISTRY[kind].ci_count, False, tally)
    assert not tally.failures, "\n".join(
        f"{f['error']}\n  reproduce: {f['reproduce']}" for f in tally.failures
    )
    assert tally.writes_lost == 0 and tally.applied_twice == 0


@pytest.mark.ray
def test_ci_ray_trial(ray_session):
    tally = Tally()
    run_kind("ray", 0, 1, False, tally)
    assert not tally.failures, "\n".join(
        f"{f['error']}\n  reproduce: {f['reproduce']}" for f in tally.failures
    )
    assert tally.crashes >= 1 and tally.malformed_inputs > 0
