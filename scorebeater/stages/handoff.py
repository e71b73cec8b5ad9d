"""The hand-off between the stages: what one stage leaves for another, and when it is due.

The daemon owns one :class:`Handoff` and gives it to every stage. Stages never call each other
and register no callbacks: each records what it finished here, and takes from here what it
must do. Every rule about when one stage's work makes another's due is written in this file,
and each method that makes work due wakes the stage that will do it (through the ``wake``
function the daemon passes in: a stage runner's ``trigger``). Nothing here does I/O; every
method is synchronous, so each rule is applied atomically with respect to the event loop.

The rules:

1. **Committed feature rows are predicted.** Every batch the feature stage commits is queued
   and wakes the prediction stage, which takes the whole queue at the start of a run. What a
   failed run did not store is put back in front (re-storing a batch is an idempotent upsert).
2. **A failed feature run makes the prediction stage reconcile.** A write that failed may
   still have committed (a lost reply) without being handed over: the next prediction run
   looks in storage for feature rows that have no prediction. A new daemon starts with a
   reconcile due, because nothing committed before a restart was handed over. A backfill
   (stored rows given the inputs added since they were stored) makes one due too: rows the
   pinned model skipped for lacking them can now be scored.
3. **Refeed requests coalesce.** Several requests before a refeed runs make one refeed; a
   ``clear_cache`` in any of them holds until a refeed with it has succeeded.
4. **A final season is validated after its last predictions.** Once the feature stage has
   processed every regular-season game of a final season, the season waits for one successful
   prediction run that *started after* that moment; then the validation stage is woken, so the
   first realized metrics cover every prediction of the season.
   :meth:`Handoff.season_ready_for_validation` is the one test of whether final outcomes may be
   stored, whatever woke the validation stage (this rule, its cron, an operator).
5. **Stored final labels are retrained on**, once per season, when retraining is enabled.
6. **An operator's quarantine decision wakes the feature stage.** A quarantined record marked
   for retry is fetched again by the next feature run, and a skipped one may complete its
   season: either wakes the feature stage at once instead of at its next poll.
7. **A champion-versus-challenger comparison wakes the promotion stage.** The validation stage
   records the latest comparison of the two versions on the same labelled rows
   (:class:`ShadowComparison`); the promotion stage (automatic policy) reads the latest one.
8. **Stored champion predictions are scored by the shadow challenger.** When a challenger is
   configured (``[tfserving] challenger_label``), every batch of feature rows whose champion
   predictions the prediction or refeed stage stored is queued for the shadow stage and wakes
   it; the champion's stages never wait for the challenger. The queue is bounded
   (``shadow_max_rows``): a batch that would pass the cap drops the queue and makes a shadow
   reconcile due instead (every feature row with a champion prediction and no challenger
   prediction of the challenger's version is scored), so a long challenger outage costs one
   catch-up read, not memory. A new daemon starts with a shadow reconcile due; a failed shadow
   run puts back what it did not store, like the prediction stage.
9. **Stored champion predictions wake the monitoring stage** (drift and estimated metrics of
   the champion's latest predictions), through the same :meth:`Handoff.champion_stored` call.
   Wakes coalesce: every batch stored while a monitoring run is in flight makes one more run.

The feature stage's stored checkpoint is the part of the hand-off that outlives a restart:
its ``complete`` flag (read by :func:`season_complete`) tells a new process that a season's
features are done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

Waker = Callable[[str], None]
"""Wakes a stage by name (``"features"``, ``"predictions"``, ``"refeed"``, ``"validation"``,
``"retrain"``, ``"shadow"``, ...)."""

SHADOW_MAX_ROWS = 200_000
"""Default cap of the shadow queue, in feature rows (a few hundred bytes each in Arrow): a
game day is a few hundred rows, a refeed of a season's latest rows well below the cap."""


def features_checkpoint_name(season: int) -> str:
    """The name of the feature stage's checkpoint of ``season``."""
    return f"features.{season}"


def season_complete(checkpoint: bytes | None) -> bool:
    """Whether a stored feature checkpoint says every regular-season game of its season is processed."""
    return checkpoint is not None and bool(orjson.loads(checkpoint).get("complete"))


@dataclass(slots=True)
class CommittedFeatures:
    """Feature rows the feature stage has committed, waiting for the prediction stage.

    ``seen_at`` is ``time.monotonic()`` when the feature stage first saw the earliest game of
    the batch final: the start of the incremental-latency measurement.
    """

    rows: pa.Table
    seen_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """The champion and the challenger scored on the same labelled rows (final outcomes).

    ``champion``/``challenger`` map a metric name (``roc_auc``, ``brier``, ``log_loss``,
    ``ece``, ``accuracy``) to its value over the ``labelled_rows`` rows both versions
    predicted; ``flip_rate`` is the share of those rows on which the two disagree at 0.5, and
    ``mean_abs_diff`` the mean absolute difference of their probabilities. ``computed_at`` is
    Unix time (seconds).
    """

    champion_version: int
    challenger_version: int
    labelled_rows: int
    champion: dict[str, float]
    challenger: dict[str, float]
    flip_rate: float
    mean_abs_diff: float
    computed_at: float


@dataclass(frozen=True, slots=True)
class RefeedRequest:
    """A request to re-score every player's latest feature row; ``clear_cache`` drops the cache first."""

    clear_cache: bool = False


def _wake_nobody(stage: str) -> None:
    del stage


class Handoff:
    """The work in flight between the stages of one daemon (see the module docstring for the rules)."""

    def __init__(
        self,
        wake: Waker = _wake_nobody,
        *,
        retrain_on_final_labels: bool = False,
        shadow: bool = False,
        shadow_max_rows: int = SHADOW_MAX_ROWS,
    ) -> None:
        """``shadow``: a challenger is configured (rule 8); without it nothing is queued for it."""
        self._wake = wake
        self._retrain_enabled = retrain_on_final_labels
        self._committed: list[CommittedFeatures] = []
        self._reconcile_due = True
        self._refeed: RefeedRequest | None = None
        self._awaiting_predictions: set[int] = set()
        self._retrain: list[int] = []
        self._comparison: ShadowComparison | None = None
        self._shadow_enabled = shadow
        self._shadow_max_rows = shadow_max_rows
        self._shadow: list[pa.Table] = []
        self._shadow_reconcile_due = shadow
        self._shadow_dropped = 0
        self._champion_version: int | None = None

    # -- rule 1 and 2: committed feature rows -> predictions -----------------------------------

    def features_committed(self, batch: CommittedFeatures) -> None:
        """Queue a committed batch of feature rows for prediction and wake the prediction stage."""
        self._committed.append(batch)
        self._wake("predictions")

    def features_failed(self) -> None:
        """A feature run failed: what it wrote may have committed unseen, so reconcile next time."""
        self._reconcile_due = True

    def features_backfilled(self) -> None:
        """Stored rows gained inputs: reconcile next time (rows skipped for lacking them may
        have no prediction), and wake the prediction stage."""
        self._reconcile_due = True
        self._wake("predictions")

    def take_committed(self) -> list[CommittedFeatures]:
        """Every queued batch, oldest first; the queue is left empty."""
        batches, self._committed = self._committed, []
        return batches

    def put_back(self, batches: list[CommittedFeatures]) -> None:
        """Return batches a failed prediction run did not finish, ahead of newer ones."""
        self._committed[:0] = batches

    def pending_batches(self) -> tuple[CommittedFeatures, ...]:
        """The queued batches (a snapshot), oldest first."""
        return tuple(self._committed)

    @property
    def pending_rows(self) -> int:
        """Feature rows committed and not yet taken by a prediction run."""
        return sum(b.rows.num_rows for b in self._committed)

    def take_reconcile(self) -> bool:
        """Whether this prediction run must reconcile; clears the flag (see :meth:`reconcile_failed`)."""
        due, self._reconcile_due = self._reconcile_due, False
        return due

    def reconcile_failed(self) -> None:
        """A reconcile did not finish: the next prediction run does it again."""
        self._reconcile_due = True

    # -- rule 3: refeeds -------------------------------------------------------------------------

    def request_refeed(self, *, clear_cache: bool = False) -> None:
        """Ask for a refeed (coalesced with one already asked for) and wake the refeed stage."""
        self._hold_refeed(RefeedRequest(clear_cache=clear_cache))
        self._wake("refeed")

    def take_refeed(self) -> RefeedRequest:
        """The refeed to run now: the one asked for, else a plain one (a scheduled slot)."""
        request, self._refeed = self._refeed or RefeedRequest(), None
        return request

    def refeed_failed(self, request: RefeedRequest) -> None:
        """Keep a failed refeed's request for the retry (the runner retries after its backoff)."""
        self._hold_refeed(request)

    def _hold_refeed(self, request: RefeedRequest) -> None:
        previous = self._refeed
        self._refeed = RefeedRequest(
            clear_cache=request.clear_cache or bool(previous and previous.clear_cache)
        )

    # -- rule 4: a final season -> its last predictions -> validation -----------------------------

    def season_features_complete(self, season: int) -> None:
        """The feature stage processed every regular-season game of final ``season``."""
        self._awaiting_predictions.add(season)
        self._wake("predictions")

    @contextlib.contextmanager
    def prediction_run(self) -> Iterator[None]:
        """Wrap one prediction run: if it succeeds, the seasons that were complete when it
        started have had their last predictions, and the validation stage is woken."""
        seasons = set(self._awaiting_predictions)
        yield
        if seasons:
            self._awaiting_predictions.difference_update(seasons)
            self._wake("validation")

    def season_ready_for_validation(
        self, season: int, *, regular_season_final: bool, features_checkpoint: bytes | None
    ) -> bool:
        """Whether final outcomes of ``season`` may be stored now.

        True once the Score API says its regular season is final, the stored feature
        checkpoint says every one of its games was processed (storing earlier would leave the
        players of unprocessed games unlabelled), and no prediction run this process owes the
        season is outstanding. Pure: reads only its arguments and this object.
        """
        return (
            regular_season_final
            and season_complete(features_checkpoint)
            and season not in self._awaiting_predictions
        )

    # -- rule 5: final labels -> retraining ------------------------------------------------------

    def final_labels_stored(self, season: int) -> None:
        """A season's final outcomes were stored (once per season); queue a retrain if enabled."""
        if self._retrain_enabled:
            self._retrain.append(season)
            self._wake("retrain")

    def take_retrain(self) -> list[int]:
        """Seasons whose final labels wait for a retrain; the queue is left empty."""
        seasons, self._retrain = self._retrain, []
        return seasons

    def retrain_failed(self, seasons: list[int]) -> None:
        """Keep seasons a failed retrain run did not get to."""
        self._retrain[:0] = seasons

    # -- rule 6: an operator's quarantine decision -> the feature stage ------------------------

    def quarantine_decided(self) -> None:
        """An operator marked a quarantined record for retry or skipped it: wake the feature stage."""
        self._wake("features")

    # -- rule 7: a shadow comparison -> the promotion stage -------------------------------------

    def shadow_compared(self, comparison: ShadowComparison) -> None:
        """Record the latest champion-versus-challenger comparison; wake the promotion stage."""
        self._comparison = comparison
        self._wake("promotion")

    def latest_comparison(self) -> ShadowComparison | None:
        """The latest comparison recorded (``None`` before the first, or with no challenger)."""
        return self._comparison

    # -- rule 8: stored champion predictions -> the shadow challenger ---------------------------

    def champion_stored(self, rows: pa.Table, version: int) -> None:
        """The champion's predictions of the feature rows ``rows`` are stored, by ``version``.

        Queues the rows for the shadow stage and wakes it (nothing is queued without a
        challenger). Past the row cap the queue is dropped and a shadow reconcile made due.
        Synchronous and cheap: the champion's stages call it after each stored batch.
        """
        self._champion_version = version
        if rows.num_rows:
            self._wake("monitoring")  # rule 9
        if not self._shadow_enabled or rows.num_rows == 0:
            return
        self._shadow.append(rows)
        self._cap_shadow()
        self._wake("shadow")

    @property
    def champion_version(self) -> int | None:
        """The version of the champion's latest stored predictions (``None`` before any)."""
        return self._champion_version

    def take_shadow(self) -> list[pa.Table]:
        """Every queued batch for the shadow stage, oldest first; the queue is left empty."""
        batches, self._shadow = self._shadow, []
        return batches

    def put_back_shadow(self, batches: list[pa.Table]) -> None:
        """Return batches a failed shadow run did not store, ahead of newer ones (the cap holds)."""
        self._shadow[:0] = batches
        self._cap_shadow()

    def drop_shadow(self) -> None:
        """Forget the queue and make a shadow reconcile due: the challenger changed or is not
        scoring now, and a reconcile finds what it has not scored whenever it is back."""
        self._shadow_dropped += sum(b.num_rows for b in self._shadow)
        self._shadow = []
        self._shadow_reconcile_due = self._shadow_reconcile_due or self._shadow_enabled

    @property
    def shadow_pending_rows(self) -> int:
        """Feature rows queued for the shadow stage."""
        return sum(b.num_rows for b in self._shadow)

    def take_shadow_reconcile(self) -> bool:
        """Whether this shadow run must reconcile; clears the flag (see :meth:`shadow_reconcile_failed`)."""
        due, self._shadow_reconcile_due = self._shadow_reconcile_due, False
        return due

    def shadow_reconcile_failed(self) -> None:
        """A shadow reconcile did not finish: the next shadow run does it again."""
        self._shadow_reconcile_due = True

    def _cap_shadow(self) -> None:
        if self.shadow_pending_rows > self._shadow_max_rows:
            self.drop_shadow()

    def shadow_status(self) -> dict[str, object]:
        """The shadow queue, for ``GET /v1/status``."""
        return {
            "enabled": self._shadow_enabled,
            "pending_batches": len(self._shadow),
            "pending_rows": self.shadow_pending_rows,
            "reconcile_due": self._shadow_reconcile_due,
            "dropped_rows": self._shadow_dropped,
        }

    def status(self) -> dict[str, object]:
        """What is in flight, for ``GET /v1/status``."""
        return {
            "pending_batches": len(self._committed),
            "pending_rows": self.pending_rows,
            "reconcile_due": self._reconcile_due,
            "refeed_requested": None if self._refeed is None else {"clear_cache": self._refeed.clear_cache},
            "seasons_awaiting_predictions": sorted(self._awaiting_predictions),
            "seasons_awaiting_retrain": list(self._retrain),
            "shadow": self.shadow_status(),
        }
