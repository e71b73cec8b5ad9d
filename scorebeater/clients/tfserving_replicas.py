"""ReplicaSet: the TF Serving replicas one client balances over, and their health.

Every replica serves the same models from the same base path (``[tfserving] base_url`` as a
list). The set decides *where* each attempt goes; what an attempt means (the HTTP call, the
retry policy) stays in :class:`~scorebeater.clients.tfserving.TFServingClient`:

* **Least outstanding requests**, round-robin on ties: a slow replica gets fewer requests
  without any latency bookkeeping, and idle replicas take turns.
* **Ejection for a cool-down** (``eject_cooldown_s``): a replica that failed to connect (or
  to answer), or failed a health check (no ``AVAILABLE`` version, or not the version pinned),
  gets no requests until its cool-down is over.
* **Probing back in**: once the cool-down is over, a health check (the model status) runs
  in a task the set owns; a replica that passes is restored, one that fails stays out for
  another cool-down. A pin surveys such replicas itself (it reads every replica's status).
* **Never no replica**: when every replica is ejected, attempts still go to one (the least
  loaded), so a lone replica, or a whole outage, behaves exactly as a single URL does: the
  retry policy, not the balancer, decides when to give up. A single replica is never ejected.

Nothing here sends HTTP or sleeps, except the probes' health checks, which the client
supplies (:attr:`ReplicaSet.health_check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from scorebeater.clients.tfserving_codec import VersionStatus
from scorebeater.config.secret import redact_urls

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence

    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass(eq=False, slots=True)
class Replica:
    """One TF Serving replica: its base URL and what the balancer knows of it."""

    index: int
    """Position in ``[tfserving] base_url``."""
    url: str
    """Base URL without a trailing slash (``http://tfserving-0:8501``)."""
    name: str
    """The URL as logged and used as the metric label (any ``user:password@`` masked)."""
    outstanding: int = 0
    """Requests sent and not yet answered."""
    ejected_until: float | None = None
    """Monotonic time its cool-down ends; ``None``: healthy."""
    probing: bool = False

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None


class ReplicaSet:
    """The replicas of one client, with least-outstanding balancing and ejection.

    Not thread-safe; every method runs on the client's event loop. :meth:`aclose` cancels
    the probes in flight (the client's ``open()`` calls it).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float,
        metrics: Metrics | None = None,
        report_health: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``urls``: at least one base URL. ``report_health``: this set exports the healthy
        replicas gauge (the champion's client; a second client over the same replicas must not
        overwrite it with its own view). Counters are always exported.

        Raises:
            ValueError: ``urls`` is empty.
        """
        if not urls:
            raise ValueError("a replica set needs at least one URL")
        self.replicas = tuple(
            Replica(index=i, url=u.rstrip("/"), name=redact_urls(u.rstrip("/"))) for i, u in enumerate(urls)
        )
        self.cooldown_s = cooldown_s
        self.health_check: Callable[[Replica], Awaitable[bool]] | None = None
        """Run on an ejected replica once its cool-down is over; ``True`` restores it. Set by the client."""
        self._metrics = metrics
        self._report_health = report_health
        self._clock = clock
        self._cursor = 0
        self._probes: set[asyncio.Task[None]] = set()
        self._closed = False
        if metrics is not None:
            # Every replica's series exists from the start at 0: a rate or an increase over them
            # then reads 0, not "no data", until the first request, error or ejection.
            for replica in self.replicas:
                metrics.tfserving_replica_requests.labels(replica.name)
                metrics.tfserving_replica_errors.labels(replica.name)
                metrics.tfserving_replica_ejections.labels(replica.name)
        self._publish_health()

    def __len__(self) -> int:
        return len(self.replicas)

    # --- choosing ---------------------------------------------------------------------------

    def healthy(self) -> list[Replica]:
        """The replicas not ejected, in configured order."""
        return [r for r in self.replicas if not r.ejected]

    def due(self) -> list[Replica]:
        """Ejected replicas whose cool-down is over and that no probe is checking now."""
        now = self._clock()
        return [
            r
            for r in self.replicas
            if r.ejected_until is not None and r.ejected_until <= now and not r.probing
        ]

    def survey_targets(self) -> list[Replica]:
        """The replicas a status survey asks: the healthy ones and those due a probe, or every
        replica when that is none (nothing better to ask)."""
        due = self.due()
        targets = [r for r in self.replicas if not r.ejected or r in due]
        return targets or list(self.replicas)

    def pick(self, avoid: Collection[int] = ()) -> Replica:
        """The replica for the next attempt: the healthy one with the fewest outstanding requests,
        round-robin on ties, skipping the indexes in ``avoid`` (replicas this call already tried)
        while another healthy one remains. When every replica is ejected it picks among all of
        them. Starts the probes that are due. Never raises.
        """
        self._start_probes()
        healthy = self.healthy()
        fresh = [r for r in healthy if r.index not in avoid]
        pool = fresh or healthy or [r for r in self.replicas if r.index not in avoid] or list(self.replicas)
        least = min(r.outstanding for r in pool)
        n = len(self.replicas)
        choice = min((r for r in pool if r.outstanding == least), key=lambda r: (r.index - self._cursor) % n)
        self._cursor = (choice.index + 1) % n
        return choice

    @contextlib.contextmanager
    def using(self, replica: Replica) -> Iterator[Replica]:
        """Count one request outstanding on ``replica`` for the block (the balancer's load)."""
        replica.outstanding += 1
        if self._metrics is not None:
            self._metrics.tfserving_replica_requests.labels(replica.name).inc()
        try:
            yield replica
        finally:
            replica.outstanding -= 1

    # --- health -------------------------------------------------------------------------------

    def failed(self, replica: Replica) -> None:
        """Count one attempt ``replica`` failed (no response, 429/5xx, a version missing)."""
        if self._metrics is not None:
            self._metrics.tfserving_replica_errors.labels(replica.name).inc()

    def eject(self, replica: Replica, reason: str) -> None:
        """Give ``replica`` no requests for a cool-down (restarted if already ejected).

        A no-op with a single replica: there is nowhere else to send requests.
        """
        if len(self.replicas) == 1:
            return
        first = not replica.ejected
        replica.ejected_until = self._clock() + self.cooldown_s
        if first:
            log.warning(
                "tfserving.replica_ejected",
                replica=replica.name,
                reason=reason,
                cooldown_s=self.cooldown_s,
                healthy=len(self.healthy()),
            )
            if self._metrics is not None:
                self._metrics.tfserving_replica_ejections.labels(replica.name).inc()
            self._publish_health()

    def restore(self, replica: Replica) -> None:
        """Put ``replica`` back in the balance (it passed a health check)."""
        if replica.ejected:
            replica.ejected_until = None
            log.info("tfserving.replica_restored", replica=replica.name, healthy=len(self.healthy()))
            self._publish_health()

    def _publish_health(self) -> None:
        if self._metrics is not None and self._report_health:
            self._metrics.tfserving_healthy_replicas.set(len(self.healthy()))

    def _start_probes(self) -> None:
        if self.health_check is None or self._closed:
            return  # closed: a request still finishing must not leave probes behind
        for replica in self.due():
            replica.probing = True
            task = asyncio.create_task(self._probe(replica, self.health_check), name="tfserving:probe")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _probe(self, replica: Replica, check: Callable[[Replica], Awaitable[bool]]) -> None:
        try:
            healthy = await check(replica)
        except Exception:  # a probe that breaks only keeps the replica out
            log.warning("tfserving.replica_probe_failed", replica=replica.name, exc_info=True)
            healthy = False
        finally:
            replica.probing = False
        if healthy:
            self.restore(replica)
        elif replica.ejected:
            self.eject(replica, "probe failed")

    async def aclose(self) -> None:
        """Cancel and reap the probes in flight; start no more. Idempotent."""
        self._closed = True
        for task in self._probes:
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
        self._probes.clear()


def merge_statuses(answers: Sequence[tuple[str, Sequence[VersionStatus]]]) -> list[VersionStatus]:
    """One status list for replicas that each answered ``(name, states)``, highest version first.

    A version is ``AVAILABLE`` only when every replica has it ``AVAILABLE``; otherwise it takes
    the first replica's state that is not (its error), or ``UNKNOWN`` with error ``NOT_FOUND``
    naming a replica that does not list it. One answer is returned as it is.
    """
    if len(answers) == 1:
        return list(answers[0][1])
    by_replica = [(name, {s.version: s for s in states}) for name, states in answers]
    versions = sorted({v for _, states in by_replica for v in states}, reverse=True)
    merged: list[VersionStatus] = []
    for version in versions:
        entry: VersionStatus | None = None
        for name, states in by_replica:
            state = states.get(version)
            if state is None:
                entry = VersionStatus(
                    version=version, state="UNKNOWN", error_code="NOT_FOUND", error_message=f"not on {name}"
                )
                break
            if not state.available:
                entry = state
                break
            entry = entry or state
        if entry is not None:
            merged.append(entry)
    return merged


def most_served(served: Sequence[Collection[int]]) -> int | None:
    """The version the most replicas serve, given each replica's versions (ties: the higher);
    ``None`` when no replica serves any."""
    counts = Counter(v for versions in served for v in versions)
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], v))
