"""A git + DVC data registry with a local remote: the demo's versioned labeled entity table.

One git revision per batch, tagged ``batch-NNNN``. The parquet file is tracked by DVC and pushed
to the remote, so a fresh clone of the registry reads it from the remote, as it would from
cloud storage.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.core.settings import TELEMETRY_OFF

BATCH_TAG_PREFIX = "batch-"
_GIT_IDENTITY = {"user.name": "driftloop demo", "user.email": "demo@driftloop.invalid"}


@dataclass(frozen=True)
class RegistryRevision:
    """What a commit to the registry produced."""

    commit: str
    tag: str
    md5: str
    rows: int
    path: str


class DataRegistry:
    """A local data registry: ``repo`` is a git repo with DVC, ``remote`` its DVC remote."""

    def __init__(self, repo: Path, remote: Path, table_path: str = "data/labels.parquet"):
        self.repo = Path(repo)
        self.remote = Path(remote)
        self.table_path = table_path

    # --- plumbing -------------------------------------------------------------------------
    def _git(self, *args: str) -> str:
        env = {**os.environ, **TELEMETRY_OFF, "GIT_TERMINAL_PROMPT": "0"}
        done = subprocess.run(
            ["git", *args], cwd=self.repo, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.repo}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _dvc(self):
        from dvc.repo import Repo

        return Repo(str(self.repo))

    # --- lifecycle ------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.repo / ".dvc").is_dir() and (self.repo / ".git").exists()

    def init(self) -> None:
        """Create the git repo, DVC inside it, and a default local remote."""
        from dvc.repo import Repo

        self.repo.mkdir(parents=True, exist_ok=True)
        self.remote.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")
        for key, value in {**_GIT_IDENTITY, "commit.gpgsign": "false"}.items():
            self._git("config", key, value)
        Repo.init(str(self.repo))
        with self._dvc().config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = "local"
            conf["remote"]["local"] = {"url": str(self.remote.resolve())}
        (self.repo / "README.md").write_text(
            "# driftloop demo data registry\n\nLabeled entity table, one git revision per batch "
            f"(tags `{BATCH_TAG_PREFIX}NNNN`). Data is in DVC; `dvc pull` fetches it.\n"
        )
        self._git("add", "-A")
        self._git("commit", "-q", "-m", "Initialise data registry")

    # --- queries --------------------------------------------------------------------------
    def batch_tags(self) -> list[str]:
        out = self._git("tag", "--list", f"{BATCH_TAG_PREFIX}*")
        return sorted(t for t in out.splitlines() if t)

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    def read_table(self) -> pd.DataFrame | None:
        file = self.repo / self.table_path
        return pd.read_parquet(file) if file.exists() else None

    # --- writes ---------------------------------------------------------------------------
    def commit_table(self, table: pd.DataFrame, message: str) -> RegistryRevision:
        """Write the table, track it with DVC, commit, tag the next batch and push."""
        file = self.repo / self.table_path
        file.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(file, index=False)
        return self.commit_file(message, rows=len(table))

    def commit_file(self, message: str, rows: int = 0) -> RegistryRevision:
        """Track whatever is at the table path with DVC, commit, tag and push it."""
        file = self.repo / self.table_path
        repo = self._dvc()
        try:
            repo.add(str(file))
            repo.push()
        finally:
            repo.close()
        dvc_file = f"{self.table_path}.dvc"
        gitignore = str(Path(self.table_path).parent / ".gitignore")
        self._git("add", dvc_file, gitignore)
        self._git("commit", "-q", "-m", message)
        tag = f"{BATCH_TAG_PREFIX}{len(self.batch_tags()) + 1:04d}"
        self._git("tag", tag)
        md5 = _md5_from_dvc_file(self.repo / dvc_file)
        return RegistryRevision(
            commit=self.head(), tag=tag, md5=md5, rows=rows, path=self.table_path
        )


def _md5_from_dvc_file(dvc_file: Path) -> str:
    import yaml

    meta = yaml.safe_load(dvc_file.read_text())
    return str(meta["outs"][0]["md5"])
