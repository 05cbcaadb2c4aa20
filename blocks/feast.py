"""A Feast feature repository, as a Prefect block."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, HttpUrl

from blocks._base import DriftloopBlock
from driftloop.core.errors import BlockConfigurationError

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastFeatureStore(DriftloopBlock):
    """A Feast feature repo: its `feature_store.yaml` says where the registry, the offline
    store and the online store are (local files, or e.g. Redis and a SQL registry)."""

    _block_type_name: ClassVar[str] = "driftloop Feast"
    _block_type_slug: ClassVar[str] = "driftloop-feast"
    _description: ClassVar[str] = "Feast feature repo used for training and online scoring."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/feast-dev.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl(
        "https://docs.feast.dev/reference/feature-repository"
    )

    repo_path: str = Field(description="Path of the feature repo (holds feature_store.yaml).")
    config_file: str = Field(
        default="feature_store.yaml",
        description=(
            "The repo's Feast configuration file, relative to repo_path: e.g. "
            "`feature_store.server.yaml` for the server profile's Redis online store. Feast "
            "expands `${VARIABLES}` in it from the environment."
        ),
    )

    @property
    def config_path(self) -> Path:
        """The Feast configuration file this block names."""
        return Path(self.repo_path) / self.config_file

    def check(self, ref: str) -> None:
        if not self.config_path.is_file():
            raise BlockConfigurationError(
                f"Block {ref!r}: repo_path {self.repo_path!r} has no {self.config_file}"
            )
        # Feast leaves an unset ${VARIABLE} as it is, and would then fail on a host named
        # "${VARIABLE}": name the variable instead.
        unset = [name for name in self.config_variables() if name not in os.environ]
        if unset:
            raise BlockConfigurationError(
                f"Block {ref!r}: {self.config_path} uses environment variable(s) "
                f"{', '.join(unset)}, which are not set in this process"
            )

    def config_variables(self) -> list[str]:
        """The environment variables the Feast configuration file expands (`${NAME}`), sorted.
        A process that opens the store elsewhere (a Ray Serve replica) needs them too."""
        return sorted(set(re.findall(r"\$\{(\w+)\}", self.config_path.read_text())))

    def local_registry(self) -> Path | None:
        """The registry file the Feast configuration names, if the registry is a local file (Feast's
        default); None for a SQL, Snowflake or object-store registry, or an unreadable config.

        Example:
            >>> FeastFeatureStore(repo_path="feature_repo").local_registry().name
            'registry.db'
        """
        import yaml

        repo = Path(self.repo_path).resolve()
        try:
            config = yaml.safe_load((repo / self.config_file).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None
        registry = config.get("registry", "data/registry.db")  # Feast's default
        if isinstance(registry, dict):
            if registry.get("registry_type", "file") != "file":
                return None
            registry = registry.get("path")
        if not isinstance(registry, str) or "://" in registry:
            return None
        path = Path(registry)
        return path if path.is_absolute() else (repo / path).resolve()

    def store(self) -> FeatureStore:
        from feast import FeatureStore

        repo = Path(self.repo_path).resolve()
        return FeatureStore(repo_path=str(repo), fs_yaml_file=repo / self.config_file)
