"""Step 9c: the metric gate."""

from __future__ import annotations

from prefect import get_run_logger, task

from driftloop.core import names
from driftloop.core.contracts import ChampionEvaluation, Metrics, ModelVersionRef, PromotionDecision
from driftloop.core.metric_direction import bar_name, clears, improvement
from driftloop.core.params import PromotionPolicy
from tasks._policy import NO_RETRIES, UNCACHED


def gate(
    challenger: ModelVersionRef,
    metrics: Metrics,
    champion: ChampionEvaluation,
    policy: PromotionPolicy,
) -> PromotionDecision:
    """Promote only a challenger that clears the floor and beats the champion by the margin."""
    metric = policy.metric
    score = metrics.score(metric)

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(
            promote=promote,
            reason=reason,
            metric=metric,
            challenger=challenger,
            challenger_metrics=metrics,
            champion=champion.champion,
            champion_metrics=champion.metrics,
        )

    bar = bar_name(metric)
    if not clears(metric, score, policy.floor):
        return decision(False, f"{metric} {score:.4f} does not clear the {bar} {policy.floor}")
    current = champion.champion
    if current is not None and current.version == challenger.version:
        if current.decision == names.DECISION_PROMOTING:
            # An earlier attempt of this same training moved the alias and was interrupted
            # before it announced the promotion: finish that promotion, do not judge again.
            previous = (
                ModelVersionRef(name=challenger.name, version=current.compared_to)
                if current.compared_to
                else None
            )
            return PromotionDecision(
                promote=True,
                reason=f"finishing the promotion of v{challenger.version}, which an "
                "interrupted attempt of this training began (the champion alias had moved)",
                metric=metric,
                challenger=challenger,
                challenger_metrics=metrics,
                champion=previous,
                champion_metrics=None,
                resumed=True,
            )
        return decision(False, f"version {challenger.version} is already the champion")
    if current is None:
        return decision(True, f"first model: {metric} {score:.4f} clears the {bar} {policy.floor}")
    if champion.metrics is None:
        return decision(False, f"not comparable: {champion.not_comparable_reason}")
    best = champion.metrics.score(metric)
    gain = improvement(metric, score, over=best)
    verdict = (
        f"{metric} {score:.4f} vs champion v{current.version} {best:.4f} "
        f"(gain {gain:+.4f}, required {policy.min_improvement})"
    )
    return decision(gain > 0 and gain >= policy.min_improvement, verdict)


@task(name="decide-promotion", cache_policy=UNCACHED, **NO_RETRIES)
def decide_promotion(
    challenger: ModelVersionRef,
    metrics: Metrics,
    champion: ChampionEvaluation,
    policy: PromotionPolicy,
) -> PromotionDecision:
    """Apply the promotion gate and log the verdict."""
    result = gate(challenger, metrics, champion, policy)
    get_run_logger().info(
        "Decision: %s: %s", "promote" if result.promote else "keep champion", result.reason
    )
    return result
