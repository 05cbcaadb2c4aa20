"""Prefect block types that configure each driftloop component.

Register them with ``prefect block register -m blocks`` (``make up`` does this for you).
"""

from blocks.dvc import DvcDataset
from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking

__all__ = ["DvcDataset", "FeastFeatureStore", "MlflowTracking"]
