"""A labeled entity table versioned with DVC, as a Prefect block."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, HttpUrl, field_validator

from blocks._base import DriftloopBlock
from driftloop.core.contracts import DatasetLocation, TableSchema


class DvcDataset(DriftloopBlock):
    """A DVC-tracked table of labeled entity rows (entity keys, event timestamp, label).

    `repo` is anything DVC accepts: a local path or a git URL. The data itself comes from the
    repo's DVC remote (or `remote`, if set), so moving storage is a change to the DVC repo or
    to this block, never to code.
    """

    _block_type_name: ClassVar[str] = "driftloop DVC dataset"
    _block_type_slug: ClassVar[str] = "driftloop-dvc-dataset"
    _description: ClassVar[str] = "Labeled entity table in a DVC data registry."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/iterative.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://dvc.org/doc/use-cases/data-registry")

    name: str = Field(
        description="Dataset name; events use the resource id driftloop.dataset.<name>.",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    repo: str = Field(description="DVC repo: local path or git URL.")
    path: str = Field(description="Path of the parquet file inside the repo.")
    default_rev: str = Field(default="main", description="Git revision used when none is given.")
    remote: str | None = Field(
        default=None, description="DVC remote to read from, if not the default."
    )
    # No default: the join keys are whatever the dataset's Feast entity uses, and a guessed
    # name would only fail later, inside the feature join, instead of here.
    entity_columns: list[str] = Field(
        min_length=1, description="Join keys of the Feast entity, e.g. ['user_id']."
    )
    timestamp_column: str = Field(
        default="event_timestamp",
        description="Column with each row's event time; Feast joins features as of this time.",
    )
    label_column: str = Field(default="label", description="Column with the training target.")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("path must be relative to the repo root")
        return value

    def location(self, rev: str | None = None) -> DatasetLocation:
        return DatasetLocation(
            repo=self.repo, path=self.path, rev=rev or self.default_rev, remote=self.remote
        )

    def table_schema(self) -> TableSchema:
        return TableSchema(
            entity_columns=tuple(self.entity_columns),
            timestamp_column=self.timestamp_column,
            label_column=self.label_column,
        )
