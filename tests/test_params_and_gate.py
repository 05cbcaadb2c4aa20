"""Flow parameters reject bad values before a run; the promotion gate decides correctly."""

import pytest
from pydantic import TypeAdapter, ValidationError

from driftloop.core.contracts import ChampionEvaluation, Metrics, ModelVersionRef
from driftloop.core.params import (
    DataQualityPolicy,
    FeatureSelection,
    ModelSpec,
    PromotionPolicy,
    SplitPolicy,
)
from tasks.decide_promotion import gate


def metrics(auc: float, log_loss: float = 0.4) -> Metrics:
    return Metrics(roc_auc=auc, f1=0.5, accuracy=0.8, log_loss=log_loss, n_rows=100,
                   positive_rate=0.2)  # fmt: skip


CHALLENGER = ModelVersionRef(name="m", version="2")
CHAMPION = ModelVersionRef(name="m", version="1")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: PromotionPolicy(min_improvement=-0.1), "min_improvement"),
        (lambda: DataQualityPolicy(max_feature_null_share=1.5), "max_feature_null_share"),
        (lambda: SplitPolicy(holdout_fraction=0), "holdout_fraction"),
        (lambda: PromotionPolicy(metric="precision"), "metric"),
        (FeatureSelection, "exactly one"),
        (lambda: FeatureSelection(features=["no_view_separator"]), "view:feature"),
        (lambda: TypeAdapter(ModelSpec).validate_python({"family": "xgboost"}), "family"),
        (
            lambda: TypeAdapter(ModelSpec).validate_python(
                {"family": "random_forest", "n_estimators": 0}
            ),
            "n_estimators",
        ),
    ],
)
def test_invalid_parameters_are_rejected(factory, message):
    with pytest.raises(ValidationError, match=message):
        factory()


def test_first_model_needs_only_the_floor():
    decision = gate(CHALLENGER, metrics(0.7), ChampionEvaluation(champion=None), PromotionPolicy())
    assert decision.promote
    assert "first model" in decision.reason
    low = gate(CHALLENGER, metrics(0.55), ChampionEvaluation(champion=None), PromotionPolicy())
    assert not low.promote
    assert "floor" in low.reason


def test_challenger_must_beat_champion_by_the_margin():
    policy = PromotionPolicy(min_improvement=0.01)
    champ = ChampionEvaluation(champion=CHAMPION, metrics=metrics(0.80))
    assert not gate(CHALLENGER, metrics(0.805), champ, policy).promote
    assert gate(CHALLENGER, metrics(0.811), champ, policy).promote
    assert not gate(CHALLENGER, metrics(0.80), champ, PromotionPolicy(min_improvement=0)).promote


def test_lower_is_better_metrics():
    policy = PromotionPolicy(metric="log_loss", min_improvement=0.01, floor=0.6)
    champ = ChampionEvaluation(champion=CHAMPION, metrics=metrics(0.8, log_loss=0.40))
    assert gate(CHALLENGER, metrics(0.8, log_loss=0.35), champ, policy).promote
    assert not gate(CHALLENGER, metrics(0.8, log_loss=0.395), champ, policy).promote
    assert not gate(CHALLENGER, metrics(0.8, log_loss=0.7), champ, policy).promote


def test_incomparable_or_same_champion_is_not_replaced():
    champ = ChampionEvaluation(champion=CHAMPION, not_comparable_reason="needs inputs ['x']")
    decision = gate(CHALLENGER, metrics(0.9), champ, PromotionPolicy())
    assert not decision.promote
    assert "needs inputs" in decision.reason
    same = ChampionEvaluation(champion=CHALLENGER, metrics=metrics(0.9))
    assert not gate(CHALLENGER, metrics(0.9), same, PromotionPolicy()).promote
