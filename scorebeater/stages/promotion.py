"""The promotion stage: the automatic policy, woken by each champion-versus-challenger comparison.

Hand-off rule 7: the validation stage records the latest comparison of the two versions on
the same labelled rows and wakes this stage. With ``promotion.auto`` off (the default) a run
only refreshes the label gauges; with it on, a run judges the latest comparison
(:func:`scorebeater.promotion.policy.judge`) and, when every rule holds and the label does not
already name the challenger, moves ``promotion.label`` to the challenger's version through
the shared :class:`~scorebeater.promotion.promoter.Promoter` (refused unless AVAILABLE),
recorded as ``auto-policy``. A comparison whose champion is not the version the label names
now (the label moved since: an operator's rollback) is not acted on, so the policy never undoes
an operator's move. The daemon always runs this stage: it costs one file read per
comparison. A refusal is a result, not a failure: the next comparison is judged again.
"""

from __future__ import annotations

from typing import Any

import structlog

from scorebeater.errors import ConfigError
from scorebeater.promotion.policy import Decision, judge
from scorebeater.promotion.promoter import Promoter, PromotionRefused
from scorebeater.promotion.records import AUTO_POLICY
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff

log = structlog.get_logger(__name__)


class PromotionStage:
    """Promotes the challenger when the automatic policy says so (see the module docstring)."""

    name = "promotion"

    def __init__(self, ctx: StageContext, handoff: Handoff, promoter: Promoter) -> None:
        self._ctx = ctx
        self._handoff = handoff
        self._promoter = promoter
        self._last: dict[str, Any] | None = None
        ctx.metrics.model_label_version.labels(ctx.cfg.promotion.label)

    def status(self) -> dict[str, object]:
        """Whether the policy is on, and the last run's decision."""
        return {"auto": self._ctx.cfg.promotion.auto, "last_decision": self._last}

    async def run(self, run_id: str) -> dict[str, object]:
        """Judge the latest comparison; promote its challenger when the policy passes."""
        del run_id  # bound into the log context by the runner
        cfg = self._ctx.cfg.promotion
        try:
            labels = await self._promoter.labels()
        except ConfigError as exc:
            labels = {}
            log.warning("promotion.models_config_unreadable", problems=list(exc.problems))
        if not cfg.auto:
            return {"auto": False, "labels": labels}
        comparison = self._handoff.latest_comparison()
        decision = judge(comparison, cfg)
        result: dict[str, Any] = {
            "auto": True,
            "promote": decision.promote,
            "reasons": list(decision.reasons),
            "promoted": None,
        }
        if decision.promote and comparison is not None:
            version = comparison.challenger_version
            current = labels.get(cfg.label)
            if current == version:
                result["reasons"].append(f"label {cfg.label!r} already names v{version}")
            elif current is not None and current != comparison.champion_version:
                # The label moved since these rows were scored (an operator's rollback, say):
                # the comparison judged another champion, and must not undo that decision.
                result["reasons"].append(
                    f"label {cfg.label!r} names v{current}, not the compared champion "
                    f"v{comparison.champion_version}: waiting for a comparison against it"
                )
            else:
                result["promoted"] = await self._promote(version, decision, comparison, result)
        self._last = result
        log.info("promotion.judged", **result)
        return result

    async def _promote(
        self, version: int, decision: Decision, comparison: Any, result: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            record = await self._promoter.promote(
                version,
                by=AUTO_POLICY,
                trigger="auto",
                reason="automatic policy: " + "; ".join(decision.reasons),
                comparison=comparison,
            )
        except PromotionRefused as exc:
            result["refused"] = {"code": exc.code, "message": str(exc)}
            return None
        return record.to_json()
