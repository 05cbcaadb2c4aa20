"""Batch scoring: the champion scores entities on their online features.

find champion -> its features (lineage) -> load the model, check its signature
  -> select entities -> materialize the online store -> get online features
  -> score -> write predictions (parquet, per model version and run time) -> summary
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow

from blocks.dvc import DvcDataset
from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import ScoringResult
from driftloop.core.params import FeatureSelection, ScoringBatch
from driftloop.core.settings import get_settings
from tasks.get_champion import get_required_champion
from tasks.get_online_features import get_online_features
from tasks.load_champion_model import load_champion_model
from tasks.load_champion_reference import champion_features
from tasks.load_labeled_entities import load_labeled_entities
from tasks.materialize_features import materialize_features
from tasks.publish_scoring_summary import publish_scoring_summary
from tasks.resolve_dataset import resolve_dataset
from tasks.resolve_features import resolve_features
from tasks.score_entities import score_entities
from tasks.select_entities import select_entities
from tasks.write_predictions import write_predictions

if TYPE_CHECKING:
    import pandas as pd


@flow(name="score-batch", log_prints=True)
def score_batch(
    batch: ScoringBatch = ScoringBatch(),
    features: FeatureSelection | None = None,
    output_dir: str | None = None,
    dataset_block: str = names.DEFAULT_BLOCK,
    feast_block: str = names.DEFAULT_BLOCK,
    mlflow_block: str = names.DEFAULT_BLOCK,
) -> ScoringResult:
    """Score entities with `models:/<name>@champion` on features from the Feast online store
    and write the predictions as parquet.

    Args:
        batch: Which entities to score, and whether to materialize the online store first.
        features: Features to score on; empty uses the champion's own (its lineage tags). A
            model whose signature does not match them is refused.
        output_dir: Root of the predictions; empty uses `<state folder>/predictions`.
        dataset_block: Name of the `driftloop-dvc-dataset` block (where entities come from).
        feast_block: Name of the `driftloop-feast` block.
        mlflow_block: Name of the `driftloop-mlflow` block.
    """
    dataset_cfg = DvcDataset.load_named(dataset_block)
    feast_cfg = FeastFeatureStore.load_named(feast_block)
    mlflow_cfg = MlflowTracking.load_named(mlflow_block)
    schema = dataset_cfg.table_schema()

    champion = get_required_champion(mlflow_cfg)
    resolved = resolve_features(feast_cfg, features or champion_features(champion, mlflow_cfg))
    model = load_champion_model(champion, mlflow_cfg, resolved)
    # pandas has no type hints here, so Prefect's overloads would take the task for an async
    # one and its result for a coroutine.
    table: pd.DataFrame | None = None
    if not batch.entity_ids:
        dataset = resolve_dataset(dataset_cfg.location())
        table = load_labeled_entities(dataset, schema)
    entities = select_entities(batch, schema, table)
    if batch.materialize_first:
        # The entities' rows may be older than the last materialization (late data): cover
        # them from the oldest one scored.
        since = None
        if table is not None:
            keys = list(schema.entity_columns)
            scored_rows = table.merge(entities, on=keys)[schema.timestamp_column]
            since = scored_rows.min().to_pydatetime() if len(scored_rows) else None
        materialize_features(feast_cfg, since)
    frame = get_online_features(feast_cfg, resolved, entities)
    scored = score_entities(model, frame, resolved, list(schema.entity_columns))
    root = Path(output_dir) if output_dir else get_settings().predictions_dir
    result = write_predictions(scored, champion, resolved, root)
    publish_scoring_summary(result)
    return result
