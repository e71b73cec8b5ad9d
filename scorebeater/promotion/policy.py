"""The automatic promotion policy: promote the challenger only when it has proved itself.

Judged on the latest champion-versus-challenger comparison (both versions scored on the same
labelled rows, final outcomes only, bucket ``all``). Every rule must hold:

- the two versions differ;
- at least ``min_labelled_rows`` labelled rows;
- challenger ROC AUC - champion ROC AUC >= ``min_auc_gain``;
- challenger ECE - champion ECE <= ``max_ece_increase`` (0: no worse calibrated).

A metric that is missing or not finite (one class only among the rows) fails its rule. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scorebeater.config import PromotionConfig
    from scorebeater.stages.handoff import ShadowComparison

_EPS = 1e-12
"""Room for float rounding at the thresholds (a gain of exactly the margin passes)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict: ``promote`` and every rule's outcome in words (``reasons``)."""

    promote: bool
    reasons: tuple[str, ...]


def _metric(values: dict[str, float], name: str) -> float | None:
    value = values.get(name)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def judge(comparison: ShadowComparison | None, cfg: PromotionConfig) -> Decision:
    """Whether ``comparison``'s challenger should take ``cfg.label`` (see the module docstring)."""
    if comparison is None:
        return Decision(promote=False, reasons=("no champion-versus-challenger comparison yet",))
    c = comparison
    if c.challenger_version == c.champion_version:
        return Decision(promote=False, reasons=(f"the challenger is the champion (v{c.champion_version})",))
    reasons: list[str] = []
    ok = True
    if c.labelled_rows >= cfg.min_labelled_rows:
        reasons.append(f"labelled rows {c.labelled_rows} >= {cfg.min_labelled_rows}")
    else:
        ok = False
        reasons.append(f"labelled rows {c.labelled_rows} < {cfg.min_labelled_rows}")
    champ_auc, chall_auc = _metric(c.champion, "roc_auc"), _metric(c.challenger, "roc_auc")
    if champ_auc is None or chall_auc is None:
        ok = False
        reasons.append("ROC AUC is not defined for both versions")
    else:
        gain = chall_auc - champ_auc
        passed = gain >= cfg.min_auc_gain - _EPS
        ok = ok and passed
        reasons.append(f"AUC gain {gain:+.4f} {'>=' if passed else '<'} {cfg.min_auc_gain:+.4f}")
    champ_ece, chall_ece = _metric(c.champion, "ece"), _metric(c.challenger, "ece")
    if champ_ece is None or chall_ece is None:
        ok = False
        reasons.append("ECE is not defined for both versions")
    else:
        increase = chall_ece - champ_ece
        passed = increase <= cfg.max_ece_increase + _EPS
        ok = ok and passed
        reasons.append(f"ECE increase {increase:+.4f} {'<=' if passed else '>'} {cfg.max_ece_increase:+.4f}")
    return Decision(promote=ok, reasons=tuple(reasons))
