"""What every stage gets: the resources of one daemon.

Stages never open resources themselves; the daemon (the composition root) opens storage, the
two HTTP clients and the metrics once, and hands each stage a :class:`StageContext` (and the
:class:`~scorebeater.stages.handoff.Handoff` through which the stages pass work on).
"""

from __future__ import annotations

from dataclasses import dataclass

from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import Config
from scorebeater.metrics import Metrics
from scorebeater.scheduler import Clock
from scorebeater.storage.base import Storage


@dataclass(frozen=True, slots=True)
class StageContext:
    """The shared resources of one daemon; every member is ready to use."""

    cfg: Config
    storage: Storage
    scores: ScoreApiClient
    model: TFServingClient
    metrics: Metrics
    clock: Clock
