"""The retrain stage: train a candidate from stored history once a season's truth is final.

Enabled by ``training.retrain_on_season_final``. Woken through the hand-off when the
validation stage stores a season's final outcomes (once per season). Training runs in a child
process (``scorebeater train --from-storage``) so TensorFlow never enters the daemon; the
candidate is published only if the promotion gate blesses it, and the model server picks it
up without a restart. A child that exits non-zero (the gate refused the candidate, bad data) is
reported in the run's summary and not retried: retrying would train the same candidate again.
When the daemon stops, the child is terminated (after the shutdown grace, like any run): a
training child must not publish after its daemon has gone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from scorebeater.stages.handoff import Handoff

log = structlog.get_logger(__name__)


def train_command(config_path: Path | None) -> list[str]:
    """The child's command line: ``scorebeater train --from-storage [--config F]``."""
    args = [sys.executable, "-m", "scorebeater", "train", "--from-storage"]
    if config_path is not None:
        args += ["--config", str(config_path)]
    return args


class RetrainStage:
    """Runs ``scorebeater train --from-storage`` for seasons whose final labels were stored."""

    name = "retrain"

    def __init__(
        self, handoff: Handoff, *, config_path: Path | None, command: Sequence[str] | None = None
    ) -> None:
        """``command`` replaces the training command line (tests run a stand-in child)."""
        self._handoff = handoff
        self._command = list(command) if command is not None else train_command(config_path)
        self._child_pid: int | None = None
        self._last_exit_code: int | None = None

    def status(self) -> dict[str, object]:
        """Seasons waiting for a retrain, the running child's pid and the last one's exit code."""
        return {
            "seasons_waiting": self._handoff.status()["seasons_awaiting_retrain"],
            "child_pid": self._child_pid,
            "last_exit_code": self._last_exit_code,
        }

    async def run(self, run_id: str) -> dict[str, object]:
        """Train once for every season queued since the last run (one child covers them all)."""
        del run_id  # bound into the log context by the runner
        seasons = self._handoff.take_retrain()
        if not seasons:
            return {"seasons": []}
        log.info("retrain.started", seasons=seasons)
        try:
            proc = await asyncio.create_subprocess_exec(*self._command, stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            self._handoff.retrain_failed(seasons)
            raise
        self._child_pid = proc.pid
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            proc.terminate()
            await proc.wait()
            log.warning("retrain.cancelled", seasons=seasons)
            raise
        finally:
            self._child_pid = None
        self._last_exit_code = code
        (log.info if code == 0 else log.warning)("retrain.finished", seasons=seasons, exit_code=code)
        return {"seasons": seasons, "exit_code": code}
