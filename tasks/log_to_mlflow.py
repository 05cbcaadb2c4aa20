"""Step 8: log the run to MLflow: params, metrics, model with signature, lineage, reference."""

from __future__ import annotations

import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import (
    DatasetVersion,
    LoggedRun,
    Metrics,
    ResolvedFeatures,
    TableSchema,
)
from driftloop.core.lineage import lineage_tags
from driftloop.core.modeling import SKOPS_TRUSTED_TYPES, feature_matrix, spec_params
from driftloop.core.params import ModelSpec, SplitPolicy, TriggerContext
from tasks._policy import IO_RETRIES, by_content

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

# Listing requirements explicitly makes log_model ~0.1 s instead of ~7 s of inference.
_MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy")
REFERENCE_SAMPLE_ROWS = 5000


def model_requirements() -> list[str]:
    return [f"{dist}=={metadata.version(dist)}" for dist in _MODEL_REQUIREMENTS]


def reference_sample(
    fit: pd.DataFrame, features: ResolvedFeatures, schema: TableSchema, rows: int
) -> pd.DataFrame:
    """The drift reference: the newest `rows` rows the model was fit on (its newest data
    included), with keys, timestamp and label. A drift check compares its newest span with
    the newest window of production features."""
    sample = fit.sort_values(schema.timestamp_column, kind="stable").tail(rows)
    keep = [*schema.entity_columns, schema.timestamp_column, *features.names, schema.label_column]
    return sample[keep].reset_index(drop=True)


@task(
    name="log-to-mlflow",
    # Keyed on what produced the model (data, features, spec, seed, split) and on where it goes,
    # so a rerun on the same inputs reuses the run instead of registering a duplicate. The
    # trigger is left out on purpose: the same data retrained for another reason is the same
    # model.
    cache_policy=by_content(
        "tracking",
        "dataset",
        "features",
        "schema",
        "spec",
        "random_state",
        "split",
        "metrics",
        "refit_metrics",
    ),
    persist_result=True,
    **IO_RETRIES,
)
def log_to_mlflow(
    model: Pipeline,
    train: pd.DataFrame,
    tracking: MlflowTracking,
    dataset: DatasetVersion,
    features: ResolvedFeatures,
    schema: TableSchema,
    spec: ModelSpec,
    random_state: int,
    split: SplitPolicy,
    metrics: Metrics,
    trigger: TriggerContext,
    refit_metrics: Metrics | None = None,
) -> LoggedRun:
    """Create an MLflow run holding everything needed to trust and reproduce the model.

    `train` is what the model was fit on (training plus holdout rows after a refit);
    `metrics` are the holdout's verdict on the fit that had not seen it, `refit_metrics` the
    refit's in-sample scores (logged as `refit_in_sample_<metric>`)."""
    import mlflow

    # `mlflow.data.from_pandas` is attached to the package at import time, out of sight of
    # type checkers; this is the module that defines it.
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    logger = get_run_logger()
    # MLflow 3 inspects the caller's uv project on every log_model (~2 s of subprocesses) to
    # infer requirements; ours are explicit, so skip it unless the user asked for it.
    os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
    os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
    experiment_id = tracking.experiment_id()
    tags = lineage_tags(dataset, features, trigger)
    columns = list(features.columns)
    matrix = feature_matrix(train, columns)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"train-{dataset.commit[:8]}-{spec.family}",
        tags=tags,
    ) as run:
        mlflow.log_params(
            {
                **spec_params(spec),
                "model.random_state": random_state,
                "split.holdout_fraction": split.holdout_fraction,
                "split.refit_on_holdout": split.refit_on_holdout,
                "data.fit_rows": len(train),
                "data.label_column": schema.label_column,
                "features.count": len(columns),
            }
        )
        mlflow.log_metrics(metrics.as_dict())
        if refit_metrics is not None:
            mlflow.log_metrics(
                {f"refit_in_sample_{k}": v for k, v in refit_metrics.as_dict().items()}
            )
        sample = reference_sample(train, features, schema, REFERENCE_SAMPLE_ROWS)
        with warnings.catch_warnings():
            # MLflow's hint about integer columns concerns model signatures; this is the
            # dataset's metadata (the model's signature is all floats, see feature_matrix).
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            dataset_input = from_pandas(
                sample,
                name=f"{Path(dataset.location.path).stem}@{dataset.commit[:8]}",
                digest=dataset.md5[:16],
                targets=schema.label_column,
            )
            mlflow.log_input(dataset_input, context="training")
        example = matrix.dropna().head(5) if matrix.notna().all(axis=1).any() else matrix.head(5)
        signature = infer_signature(example, model.predict_proba(example))
        info = mlflow.sklearn.log_model(
            model,
            name=names.MODEL_ARTIFACT,
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(),
            serialization_format="skops",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            pyfunc_predict_fn="predict_proba",
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(names.REFERENCE_SAMPLE_ARTIFACT).name
            sample.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), str(Path(names.REFERENCE_SAMPLE_ARTIFACT).parent))
    url = tracking.run_url(experiment_id, run.info.run_id)
    logger.info("Logged MLflow run %s%s", run.info.run_id, f" ({url})" if url else "")
    return LoggedRun(
        run_id=run.info.run_id, experiment_id=experiment_id, model_uri=info.model_uri, run_url=url
    )
