"""Which way a metric improves: the one rule the search, the ranking, the promotion gate and
the performance check all apply.

Example:
    >>> lower_is_better("log_loss"), lower_is_better("roc_auc")
    (True, False)
    >>> round(improvement("log_loss", 0.30, over=0.35), 2)  # 0.05 better
    0.05
    >>> clears("roc_auc", 0.71, bar=0.6), bar_name("roc_auc"), bar_name("log_loss")
    (True, 'floor', 'ceiling')
"""

from __future__ import annotations

from typing import Literal

# Every other metric driftloop reports improves upwards.
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss"})


def lower_is_better(metric: str) -> bool:
    """True for a loss (lower scores are better), False for a score like roc_auc."""
    return metric in LOWER_IS_BETTER


def optuna_direction(metric: str) -> Literal["minimize", "maximize"]:
    """The direction of an Optuna study that optimises `metric`."""
    return "minimize" if lower_is_better(metric) else "maximize"


def improvement(metric: str, score: float, over: float) -> float:
    """How much better `score` is than `over`: positive when better, negative when worse."""
    return over - score if lower_is_better(metric) else score - over


def clears(metric: str, score: float, bar: float) -> bool:
    """Whether `score` reaches the bar: at least a floor, or at most a ceiling for a loss."""
    return improvement(metric, score, over=bar) >= 0


def bar_name(metric: str) -> Literal["floor", "ceiling"]:
    """What a fixed bar on this metric is called in messages."""
    return "ceiling" if lower_is_better(metric) else "floor"


def best_first(metric: str, score: float) -> float:
    """A sort key that puts the best score first."""
    return score if lower_is_better(metric) else -score
