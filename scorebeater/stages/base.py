"""What every stage gets: the resources of one daemon, and the hand-off between stages.

Stages never open resources themselves; the daemon (the composition root) opens storage, the
two HTTP clients and the metrics once, and hands each stage a :class:`StageContext`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

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


@dataclass(slots=True)
class CommittedFeatures:
    """Feature rows the feature stage has committed, handed to the prediction stage.

    ``seen_at`` is ``time.monotonic()`` when the feature stage first saw the earliest game of
    the batch final: the start of the incremental-latency measurement.
    """

    rows: pa.Table
    seen_at: float = field(default_factory=time.monotonic)
