"""When a champion's performance on new labels counts as degraded: a pure rule."""

from __future__ import annotations

from driftloop.core.metric_direction import bar_name, clears, improvement


def degradation_reason(
    metric: str, score: float, baseline: float | None, floor: float, max_degradation: float
) -> str | None:
    """Why the champion's `score` on new labeled rows counts as degraded, or None if not.

    Degraded means it misses the gate's floor, or it is worse than `baseline` (its own holdout
    score when it was trained) by more than `max_degradation`.

    Example: roc_auc 0.71 on new rows, baseline 0.84, floor 0.6, max 0.03:
    "roc_auc 0.7100 on new labels is 0.1300 worse than its holdout 0.8400 (allowed 0.03)".
    """
    if not clears(metric, score, floor):
        return f"{metric} {score:.4f} on new labels misses the {bar_name(metric)} {floor}"
    if baseline is None:
        return None
    loss = -improvement(metric, score, over=baseline)
    if loss > max_degradation:
        return (
            f"{metric} {score:.4f} on new labels is {loss:.4f} worse than its holdout "
            f"{baseline:.4f} (allowed {max_degradation})"
        )
    return None
