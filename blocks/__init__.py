"""Prefect block types that configure each driftloop component.

Register them with ``prefect block register -m blocks`` (``make up`` does this for you).
"""

from blocks.drift import DriftPolicy
from blocks.dvc import DvcDataset
from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from blocks.ray import RayCluster
from blocks.serving import ServingConfig

__all__ = [
    "DriftPolicy",
    "DvcDataset",
    "FeastFeatureStore",
    "MlflowTracking",
    "RayCluster",
    "ServingConfig",
]
