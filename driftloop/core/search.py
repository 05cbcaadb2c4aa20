"""The model search space, sampled with Optuna (ask/tell, so trials can run elsewhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from driftloop.core.contracts import TrialOutcome
from driftloop.core.metric_direction import best_first, optuna_direction
from driftloop.core.params import ModelSpec, SearchPolicy

if TYPE_CHECKING:
    import optuna

_SPEC = TypeAdapter(ModelSpec)
_SHORT = {"logistic_regression": "logreg", "random_forest": "rf", "gradient_boosting": "gbm"}


def create_study(policy: SearchPolicy) -> optuna.Study:
    """A seeded TPE study; `constant_liar` keeps parallel trials in one batch apart."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=policy.seed, constant_liar=True)
    return optuna.create_study(direction=optuna_direction(policy.metric), sampler=sampler)


def suggest_spec(trial: optuna.Trial, policy: SearchPolicy) -> ModelSpec:
    """Sample a model family and its hyperparameters."""
    family = trial.suggest_categorical("family", list(policy.families))
    if family == "logistic_regression":
        params = {
            "C": trial.suggest_float("lr_C", 1e-3, 10.0, log=True),
            "class_weight": trial.suggest_categorical("lr_class_weight", [None, "balanced"]),
        }
    elif family == "random_forest":
        params = {
            "n_estimators": trial.suggest_int("rf_n_estimators", 50, 300, step=50),
            "max_depth": trial.suggest_int("rf_max_depth", 3, 16),
            "min_samples_leaf": trial.suggest_int("rf_min_samples_leaf", 1, 50, log=True),
            "max_features": trial.suggest_float("rf_max_features", 0.2, 1.0),
        }
    else:
        params = {
            "learning_rate": trial.suggest_float("gbm_learning_rate", 0.01, 0.3, log=True),
            "max_iter": trial.suggest_int("gbm_max_iter", 50, 300, step=50),
            "max_leaf_nodes": trial.suggest_int("gbm_max_leaf_nodes", 4, 64, log=True),
            "min_samples_leaf": trial.suggest_int("gbm_min_samples_leaf", 5, 100, log=True),
            "l2_regularization": trial.suggest_float("gbm_l2", 1e-3, 10.0, log=True),
        }
    return _SPEC.validate_python({"family": family, **params})


def describe(spec: ModelSpec) -> str:
    """A short label for task run names and tables, e.g. `gbm lr=0.05 it=150 leaves=8`."""
    data = spec.model_dump()
    family = data.pop("family")
    short = {
        "learning_rate": "lr", "max_iter": "it", "max_leaf_nodes": "leaves",
        "min_samples_leaf": "leaf", "l2_regularization": "l2", "n_estimators": "n",
        "max_depth": "depth", "max_features": "feat", "class_weight": "cw",
    }  # fmt: skip
    parts = []
    for key, value in data.items():
        if value is None or (key == "max_iter" and family == "logistic_regression"):
            continue
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{short.get(key, key)}={text}")
    return " ".join([_SHORT[family], *parts])


def spec_from_dict(data: dict[str, object]) -> ModelSpec:
    return _SPEC.validate_python(data)


class SearchFailedError(RuntimeError):
    """No trial of the model search completed."""


def best_outcome(outcomes: list[TrialOutcome], policy: SearchPolicy) -> TrialOutcome:
    """The completed trial with the best score (lowest for log_loss)."""
    completed = [(o, o.result.score) for o in outcomes if o.result is not None]
    if not completed:
        states = ", ".join(f"trial {o.number}: {o.state} ({o.error})" for o in outcomes)
        raise SearchFailedError(f"All {len(outcomes)} model-search trials failed: {states}")
    best, _ = min(completed, key=lambda pair: best_first(policy.metric, pair[1]))
    return best
