"""How drift is measured and when it counts, as a Prefect block."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, HttpUrl

from blocks._base import DriftloopBlock
from driftloop.core.errors import BlockConfigurationError

# Evidently's stattests by the column types they accept (evidently 0.7 registry).
NumericMethod = Literal[
    "ks", "wasserstein", "psi", "jensenshannon", "kl_div", "hellinger", "anderson",
    "cramer_von_mises", "mannw", "t_test", "ed", "es", "empirical_mmd",
]  # fmt: skip
CategoricalMethod = Literal[
    "chisquare", "z", "jensenshannon", "psi", "kl_div", "hellinger", "TVD", "g_test",
    "fisher_exact",
]  # fmt: skip
_ANY_METHOD = set(get_args(NumericMethod)) | set(get_args(CategoricalMethod))


class DriftPolicy(DriftloopBlock):
    """Evidently's data drift preset, configured: which statistical test each column gets,
    the per-column threshold, and the share of drifted columns that counts as drift."""

    _block_type_name: ClassVar[str] = "driftloop Drift Policy"
    _block_type_slug: ClassVar[str] = "driftloop-drift-policy"
    _description: ClassVar[str] = "How the drift monitor measures drift and when it reports it."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/evidentlyai.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl(
        "https://docs.evidentlyai.com/metrics/preset_data_drift"
    )

    num_method: NumericMethod | None = Field(
        default=None,
        description="Test for numeric columns; empty lets Evidently choose by sample size "
        "(K-S below 1000 rows, Wasserstein distance above).",
    )
    cat_method: CategoricalMethod | None = Field(
        default=None,
        description="Test for categorical columns; empty lets Evidently choose (chi-square "
        "or Jensen-Shannon).",
    )
    per_column_method: dict[str, str] = Field(
        default_factory=dict, description="Test for specific columns, e.g. {'amount': 'psi'}."
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="Per-column threshold: a p-value below it, or a distance above it, marks "
        "the column drifted. Empty uses each test's default (0.05 for p-values, 0.1 for "
        "distances).",
    )
    per_column_threshold: dict[str, float] = Field(
        default_factory=dict, description="Threshold for specific columns."
    )
    drift_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Share of drifted columns at or above which the check reports drift.",
    )
    min_rows: int = Field(
        default=200, ge=1, description="Fewest rows in the current window that a check needs."
    )

    def check(self, ref: str) -> None:
        unknown = {c: m for c, m in self.per_column_method.items() if m not in _ANY_METHOD}
        if unknown:
            raise BlockConfigurationError(
                f"Block {ref!r}: unknown drift method(s) {unknown}; choose from "
                f"{sorted(_ANY_METHOD)}"
            )
        bad = {c: t for c, t in self.per_column_threshold.items() if t <= 0}
        if bad:
            raise BlockConfigurationError(f"Block {ref!r}: thresholds must be > 0, got {bad}")

    def preset_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `evidently.presets.DataDriftPreset`."""
        kwargs: dict[str, Any] = {"drift_share": self.drift_share}
        for key in ("num_method", "cat_method", "threshold"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.per_column_method:
            kwargs["per_column_method"] = dict(self.per_column_method)
        if self.per_column_threshold:
            kwargs["per_column_threshold"] = dict(self.per_column_threshold)
        return kwargs
