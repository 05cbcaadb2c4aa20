"""The online serving application of the champion (Ray Serve), as a Prefect block."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, HttpUrl, SecretStr

from blocks._base import DriftloopBlock
from blocks.prediction_log import ParquetPredictionLog, PredictionLog, SqlPredictionLog
from driftloop.core import names
from driftloop.core.errors import BlockConfigurationError
from driftloop.core.serving import ServingLimits


class ServingConfig(DriftloopBlock):
    """How `driftloop serve` (started by `make up`) serves `models:/<model>@champion` on Ray
    Serve: where it listens, what it accepts, whether the challenger scores in shadow, and
    where what was served is logged.

    Host, port and replicas are read when the application starts (restart `make up` after
    editing them); the champion itself is swapped while it runs.

    Example:
        Where this machine's processes reach the application:
        ```python
        from blocks.serving import ServingConfig

        serving = ServingConfig.load("BLOCK_NAME")
        print(serving.base_url)  # http://127.0.0.1:8000 for the default document
        ```
    """

    _block_type_name: ClassVar[str] = "driftloop Serving"
    _block_type_slug: ClassVar[str] = "driftloop-serving"
    _description: ClassVar[str] = "Online serving of the champion on Ray Serve."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/ray-project.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl(
        "https://docs.ray.io/en/latest/serve/index.html"
    )

    enabled: bool = Field(
        default=True,
        description=(
            "Whether the application runs (`make up` starts it) and promotions swap it. "
            "Off: the swap flow records that there was nothing to swap."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="Interface Ray Serve's HTTP proxy binds (0.0.0.0 to serve other machines).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP API.")
    url: str | None = Field(
        default=None,
        description=(
            "URL other processes reach the application at (e.g. `http://serving:8000` in "
            "compose). Empty: http://<host>:<port>, with 127.0.0.1 for 0.0.0.0."
        ),
    )
    num_replicas: int = Field(default=1, ge=1, le=16, description="Ray Serve replicas.")
    compiled_scoring: bool = Field(
        default=True,
        description=(
            "Score with the model's ONNX form (skl2onnx, ONNX Runtime) where it gives the "
            "MLflow model's answers, checked on the version's training sample when it loads; "
            "otherwise, or when off, the MLflow pyfunc scores. `GET /model` names the scorer."
        ),
    )
    shadow_challenger: bool = Field(
        default=False,
        description=(
            "Also score every request with `models:/<model>@challenger`, if that alias "
            "exists. Its predictions go to the prediction log (role `shadow`), never to the "
            "caller."
        ),
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1, description="Larger request bodies are refused with 413."
    )
    max_rows: int = Field(
        default=1_000, ge=1, description="Entities or rows per request; more are refused."
    )
    prediction_log_dir: str | None = Field(
        default=None,
        description=(
            "Folder of the prediction log (parquet, one folder per model and day). Empty: "
            "`served/` in driftloop's state folder. The drift monitor reads it (source "
            "`served`)."
        ),
    )
    prediction_log_url: SecretStr | None = Field(
        default=None,
        description=(
            "A database for the prediction log instead of parquet files: a SQLAlchemy URL "
            "(`postgresql://user:password@host:5432/served`); rows go to its table "
            "`driftloop_predictions`, created if missing. The server profile sets it to its "
            "PostgreSQL. Empty: parquet files in `prediction_log_dir`."
        ),
    )
    log_batch_rows: int = Field(
        default=500, ge=1, description="The prediction log writes a batch every this many rows."
    )
    log_flush_s: float = Field(
        default=5.0, gt=0, description="... or when its oldest unwritten row is this old."
    )
    alias_poll_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How often each replica checks where the champion alias points. A promotion swaps "
            "at once (its automation asks the application to reload); the poll catches an "
            "alias moved by hand, e.g. a rollback in the MLflow UI."
        ),
    )
    mlflow_block: str = Field(
        default=names.DEFAULT_BLOCK, description="The `driftloop-mlflow` block (the model)."
    )
    ray_block: str = Field(
        default=names.DEFAULT_BLOCK,
        description="The `driftloop-ray` block (the cluster; empty address: RAY_ADDRESS).",
    )
    feast_block: str = Field(
        default=names.DEFAULT_BLOCK,
        description="The `driftloop-feast` block (the online store of by-entity requests).",
    )

    @property
    def base_url(self) -> str:
        """Where this machine's processes reach the application."""
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def limits(self) -> ServingLimits:
        return ServingLimits(max_body_bytes=self.max_body_bytes, max_rows=self.max_rows)

    def prediction_log(self, default_dir: Path) -> PredictionLog:
        """Where what was served is logged: the database of `prediction_log_url`, else
        parquet files in `prediction_log_dir`, else in `default_dir` (the state folder's
        `served/`, from the settings)."""
        if self.prediction_log_url is not None and self.prediction_log_url.get_secret_value():
            return SqlPredictionLog(self.prediction_log_url.get_secret_value())
        return ParquetPredictionLog(
            Path(self.prediction_log_dir) if self.prediction_log_dir else default_dir
        )

    def check(self, ref: str) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise BlockConfigurationError(f"Block {ref!r}: url {self.url!r} is not an http(s) URL")
        if self.prediction_log_url is not None and self.prediction_log_url.get_secret_value():
            from sqlalchemy.engine import make_url

            try:
                make_url(self.prediction_log_url.get_secret_value())
            except Exception as exc:  # the URL itself may hold a password: never show it
                raise BlockConfigurationError(
                    f"Block {ref!r}: prediction_log_url is not a database URL SQLAlchemy "
                    f"reads ({type(exc).__name__}); expected e.g. "
                    "postgresql://user:password@host:5432/served"
                ) from None
