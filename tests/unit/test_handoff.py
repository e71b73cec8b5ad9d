"""The hand-off rules between the stages (``scorebeater/stages/handoff.py``), one scenario each."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from scorebeater.stages.handoff import CommittedFeatures, Handoff, RefeedRequest, season_complete


class Woken:
    """Records which stages the hand-off woke, in order."""

    def __init__(self) -> None:
        self.stages: list[str] = []

    def __call__(self, stage: str) -> None:
        self.stages.append(stage)


def _batch(rows: int) -> CommittedFeatures:
    return CommittedFeatures(rows=pa.table({"player_id": pa.array(range(rows), pa.int64())}))


def _checkpoint(*, complete: bool) -> bytes:
    return orjson.dumps({"season": 2014, "complete": complete})


@pytest.fixture(name="woken")
def _woken() -> Woken:
    return Woken()


def test_committed_rows_wake_the_prediction_stage_and_are_taken_once(woken: Woken) -> None:
    handoff = Handoff(woken)
    handoff.features_committed(_batch(3))
    handoff.features_committed(_batch(2))
    assert woken.stages == ["predictions", "predictions"]
    assert handoff.pending_rows == 5
    taken = handoff.take_committed()
    assert [b.rows.num_rows for b in taken] == [3, 2]
    assert handoff.take_committed() == []
    assert handoff.pending_rows == 0


def test_a_failed_prediction_run_puts_its_batches_back_ahead_of_newer_ones(woken: Woken) -> None:
    handoff = Handoff(woken)
    handoff.features_committed(_batch(3))
    taken = handoff.take_committed()
    handoff.features_committed(_batch(1))  # committed while the run was scoring
    handoff.put_back(taken)
    assert [b.rows.num_rows for b in handoff.pending_batches()] == [3, 1]


def test_a_new_daemon_reconciles_once_and_a_failed_feature_run_asks_again(woken: Woken) -> None:
    handoff = Handoff(woken)
    assert handoff.take_reconcile() is True  # after a start nothing was handed over
    assert handoff.take_reconcile() is False
    handoff.features_failed()  # its write may have committed without a hand-over
    assert handoff.take_reconcile() is True
    assert handoff.take_reconcile() is False


def test_a_feature_failure_during_a_reconcile_is_not_lost(woken: Woken) -> None:
    handoff = Handoff(woken)
    assert handoff.take_reconcile()
    handoff.features_failed()  # while the reconcile runs
    assert handoff.take_reconcile() is True


def test_a_failed_reconcile_is_done_again(woken: Woken) -> None:
    handoff = Handoff(woken)
    assert handoff.take_reconcile()
    handoff.reconcile_failed()
    assert handoff.take_reconcile() is True


def test_refeed_requests_coalesce_and_clear_cache_holds_until_it_has_run(woken: Woken) -> None:
    handoff = Handoff(woken)
    handoff.request_refeed(clear_cache=True)
    handoff.request_refeed()
    assert woken.stages == ["refeed", "refeed"]
    request = handoff.take_refeed()
    assert request == RefeedRequest(clear_cache=True)
    handoff.refeed_failed(request)
    assert handoff.take_refeed() == RefeedRequest(clear_cache=True)
    # A scheduled slot with nothing requested is a plain refeed.
    assert handoff.take_refeed() == RefeedRequest(clear_cache=False)


def test_a_final_season_is_validated_only_after_a_prediction_run_that_started_after_it(woken: Woken) -> None:
    handoff = Handoff(woken)
    done = _checkpoint(complete=True)

    def ready() -> bool:
        return handoff.season_ready_for_validation(2014, regular_season_final=True, features_checkpoint=done)

    with handoff.prediction_run():  # a run already going when the season completes
        handoff.season_features_complete(2014)
        assert woken.stages == ["predictions"]
    assert not ready()  # that run may have started before the last rows were committed
    assert "validation" not in woken.stages
    with pytest.raises(RuntimeError), handoff.prediction_run():
        raise RuntimeError("model server down")
    assert not ready()
    with handoff.prediction_run():
        pass
    assert ready()
    assert woken.stages == ["predictions", "validation"]


def test_validation_waits_for_the_score_api_and_the_stored_feature_checkpoint(woken: Woken) -> None:
    handoff = Handoff(woken)
    done, running = _checkpoint(complete=True), _checkpoint(complete=False)
    assert not handoff.season_ready_for_validation(2014, regular_season_final=False, features_checkpoint=done)
    assert not handoff.season_ready_for_validation(
        2014, regular_season_final=True, features_checkpoint=running
    )
    assert not handoff.season_ready_for_validation(2014, regular_season_final=True, features_checkpoint=None)
    # Another process (``scorebeater once --stage validation``) decides from storage alone.
    assert handoff.season_ready_for_validation(2014, regular_season_final=True, features_checkpoint=done)


def test_season_complete_reads_the_feature_checkpoint() -> None:
    assert season_complete(_checkpoint(complete=True))
    assert not season_complete(_checkpoint(complete=False))
    assert not season_complete(None)


def test_final_labels_queue_a_retrain_only_when_enabled(woken: Woken) -> None:
    off = Handoff(woken)
    off.final_labels_stored(2014)
    assert off.take_retrain() == []
    assert woken.stages == []
    on = Handoff(woken, retrain_on_final_labels=True)
    on.final_labels_stored(2014)
    assert woken.stages == ["retrain"]
    seasons = on.take_retrain()
    assert seasons == [2014]
    on.retrain_failed(seasons)
    assert on.status()["seasons_awaiting_retrain"] == [2014]


def test_status_shows_the_work_in_flight(woken: Woken) -> None:
    handoff = Handoff(woken)
    handoff.features_committed(_batch(4))
    handoff.request_refeed(clear_cache=True)
    handoff.season_features_complete(2014)
    assert handoff.status() == {
        "pending_batches": 1,
        "pending_rows": 4,
        "reconcile_due": True,
        "refeed_requested": {"clear_cache": True},
        "seasons_awaiting_predictions": [2014],
        "seasons_awaiting_retrain": [],
        "shadow": {
            "enabled": False,
            "pending_batches": 0,
            "pending_rows": 0,
            "reconcile_due": False,
            "dropped_rows": 0,
        },
    }


def test_an_operators_quarantine_decision_wakes_the_feature_stage(woken: Woken) -> None:
    handoff = Handoff(woken)
    handoff.quarantine_decided()
    assert woken.stages == ["features"]
    assert handoff.pending_rows == 0  # nothing else changes hands


def _rows(n: int) -> pa.Table:
    return pa.table({"player_id": pa.array(range(n), pa.int64())})


def test_stored_champion_rows_are_queued_for_the_shadow_only_with_a_challenger(woken: Woken) -> None:
    off = Handoff(woken)
    off.champion_stored(_rows(3), 1)
    assert off.shadow_pending_rows == 0
    assert off.champion_version == 1
    assert "shadow" not in woken.stages
    assert off.take_shadow_reconcile() is False

    on = Handoff(woken, shadow=True)
    assert on.take_shadow_reconcile() is True  # a new daemon catches up first
    assert on.take_shadow_reconcile() is False
    on.champion_stored(_rows(3), 2)
    on.champion_stored(_rows(0), 2)  # nothing to score: not queued, nobody woken
    on.champion_stored(_rows(2), 2)
    assert [s for s in woken.stages if s == "shadow"] == ["shadow", "shadow"]
    assert on.champion_version == 2
    batches = on.take_shadow()
    assert [b.num_rows for b in batches] == [3, 2]
    assert on.shadow_pending_rows == 0


def test_a_failed_shadow_run_puts_back_what_it_did_not_store_ahead_of_newer_rows(woken: Woken) -> None:
    handoff = Handoff(woken, shadow=True)
    handoff.take_shadow_reconcile()
    handoff.champion_stored(_rows(1), 1)
    taken = handoff.take_shadow()
    handoff.champion_stored(_rows(4), 1)
    handoff.put_back_shadow(taken)
    assert [b.num_rows for b in handoff.take_shadow()] == [1, 4]
    handoff.shadow_reconcile_failed()
    assert handoff.take_shadow_reconcile() is True


def test_the_shadow_queue_past_its_cap_is_dropped_for_a_reconcile(woken: Woken) -> None:
    handoff = Handoff(woken, shadow=True, shadow_max_rows=5)
    handoff.take_shadow_reconcile()
    handoff.champion_stored(_rows(3), 1)
    handoff.champion_stored(_rows(2), 1)
    assert handoff.shadow_pending_rows == 5
    assert handoff.shadow_status()["reconcile_due"] is False
    handoff.champion_stored(_rows(1), 1)  # 6 > 5: the catch-up read replaces the queue
    assert handoff.shadow_pending_rows == 0
    assert handoff.shadow_status() == {
        "enabled": True,
        "pending_batches": 0,
        "pending_rows": 0,
        "reconcile_due": True,
        "dropped_rows": 6,
    }
    assert handoff.take_shadow_reconcile() is True


def test_stored_champion_predictions_wake_the_monitoring_stage(woken: Woken) -> None:
    """Rule 9: with or without a challenger; a batch of no rows wakes nobody."""
    for handoff in (Handoff(woken), Handoff(woken, shadow=True)):
        woken.stages.clear()
        handoff.champion_stored(_rows(0), 1)
        assert "monitoring" not in woken.stages
        handoff.champion_stored(_rows(2), 1)
        handoff.champion_stored(_rows(1), 1)
        # one wake per stored batch; the runner coalesces wakes that come before its next run
        assert [s for s in woken.stages if s == "monitoring"] == ["monitoring", "monitoring"]
