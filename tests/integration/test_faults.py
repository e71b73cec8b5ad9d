"""The fault suite's short version: every fault once (SIGKILL on every backend), each run compared
row by row with an uninterrupted run. The full table is ``python -m faults`` (``make faults``)."""

from __future__ import annotations

import argparse

import pytest

from faults.__main__ import plan, run_all, table

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1500)
async def test_every_fault_leaves_the_store_as_an_uninterrupted_run_would() -> None:
    # The suite starts its own Postgres and moto (a fault restarts Postgres; moto sits behind a
    # proxy that fails): one that cannot start fails this test, never skips it.
    runs = plan(argparse.Namespace(quick=True, faults=None, backends=None, runs=1))
    outcomes = await run_all(runs)
    assert len(outcomes) == len(runs)
    assert all(o.identical and o.lost == 0 and o.duplicated == 0 for o in outcomes), table(outcomes)
