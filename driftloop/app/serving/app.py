"""The Ray Serve deployment that serves the champion over HTTP (FastAPI routes).

Routes:
- `POST /predict`: by entity (`{"customer_id": [1001, 1002]}`, features from the Feast online
  store) or by features (`{"instances": [{...}, ...]}`, checked against the model's inputs).
  Every answer names the model and version that gave it, in the body and in the
  `x-driftloop-model` / `x-driftloop-model-version` headers.
- `GET /model`: what is served (champion, shadow challenger, features, entity keys).
- `GET /health`: the replica answers (200 even before the first champion).
- `GET /metrics`: Prometheus text.
- `POST /admin/reload`: look up the aliases now and swap to what they point to (the
  promotion automation's `swap-serving-model` flow calls it).

A swap loads the new version completely (model, features, signature check, one warm-up
prediction) before it replaces the old one, in one assignment; a request keeps the version it
started with. Nothing is refused during a swap, and a version that fails to load is not
swapped in: the replica keeps serving the old one and reports the error at `/model`.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run
# time, and Ray Serve's ingress resolves them outside this module's namespace, so a string
# annotation (`request: "Request"`) would turn into a required query parameter.
import asyncio
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from blocks.serving import ServingConfig
from driftloop.app.serving.metrics import ServingMetrics
from driftloop.app.serving.model import ServedModel, load_alias, online_values
from driftloop.app.serving.prediction_log import PredictionLogWriter
from driftloop.core import names
from driftloop.core import prediction_log as plog
from driftloop.core.serving import (
    EntityRequest,
    FeatureRequest,
    ServingRequestError,
    ServingUnavailable,
    missing_per_row,
    parse_request,
    unknown_entities,
)
from driftloop.core.settings import quiet_environment

APP_NAME = "driftloop-champion"
HEADER_MODEL = "x-driftloop-model"
HEADER_VERSION = "x-driftloop-model-version"

logger = logging.getLogger("ray.serve")
api = FastAPI(title="driftloop serving", description=__doc__)


@serve.deployment(
    name="champion",
    # The replica waits on I/O and scores small batches: it reserves no CPU, so that the
    # model search's Ray tasks keep every core of the stack's Ray.
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(api)
class ChampionServer:
    """One replica: the champion (and optionally the challenger in shadow), its Feast online
    store, its metrics and its share of the prediction log."""

    def __init__(
        self,
        config: ServingConfig,
        tracking: MlflowTracking,
        feast: FeastFeatureStore,
        default_log_dir: str,
    ):
        quiet_environment()
        self.config = config
        self.tracking = tracking
        self.feast = feast
        self.store = feast.store()
        self.model_name = tracking.registered_model_name
        replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ServingMetrics(self.model_name, replica)
        self.log = PredictionLogWriter(
            config.prediction_log(Path(default_log_dir)), config.log_batch_rows,
            config.log_flush_s, on_error=self._log_error,
        )  # fmt: skip
        self.champion: ServedModel | None = None
        self.shadow: ServedModel | None = None
        self.last_error: str | None = None
        self.checked_at: float | None = None
        self._reload = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._poller = threading.Thread(target=self._poll, name="alias-poll", daemon=True)
        self._poller.start()

    def _log_error(self, kind: str) -> None:
        self.metrics.errors.labels(self.model_name, self.metrics.replica, kind).inc()

    # --- model swaps ----------------------------------------------------------------------
    def refresh(self) -> dict[str, Any]:
        """Look up the aliases and swap to the versions they point to (a no-op if unchanged).
        A version that fails to load is not swapped in; the error is kept for `/model`. The
        champion and the shadow are loaded apart: a challenger that cannot be loaded never
        holds up a promotion."""
        with self._reload:
            errors = []
            compiled = self.config.compiled_scoring
            try:
                champion = load_alias(
                    self.tracking, self.feast, self.store, names.ALIAS_CHAMPION,
                    self.champion, compiled,
                )  # fmt: skip
                self._swap_champion(champion)
            except Exception as exc:
                errors.append(f"champion: {type(exc).__name__}: {exc}")
            shadow = None
            if self.config.shadow_challenger:
                try:
                    shadow = load_alias(
                        self.tracking, self.feast, self.store, names.ALIAS_CHALLENGER,
                        self.shadow, compiled,
                    )  # fmt: skip
                except Exception as exc:
                    errors.append(f"challenger: {type(exc).__name__}: {exc}")
            champion = self.champion
            # A challenger that is the champion itself has nothing to shadow.
            self.shadow = (
                shadow if shadow and champion and shadow.version != champion.version else None
            )
            self.last_error = "; ".join(errors) or None
            for error in errors:
                self.metrics.errors.labels(self.model_name, self.metrics.replica, "reload").inc()
                logger.warning("Reload failed, serving what was loaded before: %s", error)
            self.checked_at = time.time()
            return self.describe()

    def _swap_champion(self, champion: ServedModel | None) -> None:
        if champion is self.champion:
            return
        before = self.champion.version if self.champion else None
        # One assignment: requests in flight keep the version they started with.
        self.champion = champion
        replica = self.metrics.replica
        self.metrics.swaps.labels(self.model_name, replica).inc()
        self.metrics.champion_version.labels(self.model_name, replica).set(
            float(champion.version) if champion else 0
        )
        logger.info(
            "Champion %s: v%s -> v%s", self.model_name, before,
            champion.version if champion else None,
        )  # fmt: skip

    def _poll(self) -> None:
        """Every `alias_poll_s`: catch an alias moved without an event (a rollback by hand),
        and read the champion's last drift share."""
        while not self._stop.wait(self.config.alias_poll_s):
            try:
                self.refresh()
                self._read_drift_share()
            except Exception:  # the poll must outlive any one failure
                logger.exception("Serving poll failed")

    def _read_drift_share(self) -> None:
        champion = self.champion
        if champion is None:
            return
        run_id = self.tracking.find_monitoring_run(
            names.MONITOR_DRIFT, champion.name, champion.version
        )
        gauge = self.metrics.drift_share.labels(
            self.model_name, self.metrics.replica, champion.version
        )
        if run_id is None:
            gauge.set(float("nan"))
            return
        history = self.tracking.activate().get_metric_history(run_id, "drift_share")
        if history:
            gauge.set(max(history, key=lambda m: m.step).value)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "champion": self.champion.describe() if self.champion else None,
            "shadow": self.shadow.describe() if self.shadow else None,
            "shadow_challenger": self.config.shadow_challenger,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
            "replica": self.metrics.replica,
            "prediction_log": {
                "where": self.log.store.where(self.model_name),
                "written_rows": self.log.written_rows,
                "dropped_rows": self.log.dropped_rows,
                "last_error": self.log.last_error,
            },
        }

    def __del__(self) -> None:
        # Ray Serve calls this when it stops the replica: write what is still buffered.
        self._stop.set()
        self.log.close()

    # --- routes ---------------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> dict[str, Any]:
        champion = self.champion
        return {"status": "ok", "model": self.model_name,
                "version": champion.version if champion else None}  # fmt: skip

    @api.get("/model")
    def model(self) -> dict[str, Any]:
        return self.describe()

    @api.post("/admin/reload")
    async def reload(self) -> dict[str, Any]:
        # Off the event loop: requests keep being answered while the new version loads.
        return await asyncio.to_thread(self.refresh)

    @api.get("/metrics")
    def prometheus(self) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        champion = self.champion  # this request's version, whatever a swap does meanwhile
        replica = self.metrics.replica
        if champion is None:
            self.metrics.errors.labels(self.model_name, replica, "no_champion").inc()
            return JSONResponse(
                {"error": f"{self.model_name!r} has no {names.ALIAS_CHAMPION!r} yet: train "
                 "and promote a model first", "model": self.model_name, "version": None},
                status_code=503, headers={HEADER_MODEL: self.model_name},
            )  # fmt: skip
        headers = {HEADER_MODEL: champion.name, HEADER_VERSION: champion.version}
        mode = "entity"
        try:
            length = request.headers.get("content-length")
            body = await request.body()
            parsed = parse_request(
                body, champion.keys, champion.inputs, self.config.limits,
                int(length) if length and length.isdigit() else None,
            )  # fmt: skip
            if isinstance(parsed, EntityRequest):
                frame, ids, imputed = self._by_entity(champion, parsed)
            else:
                mode = "features"
                frame, ids, imputed = self._by_features(champion, parsed)
            scores = champion.score(frame)
        except (ServingRequestError, ServingUnavailable) as exc:
            self.metrics.errors.labels(self.model_name, replica, exc.kind).inc()
            self.metrics.requests.labels(
                self.model_name, replica, champion.version, mode, str(exc.status)
            ).inc()
            return JSONResponse(
                {"error": exc.message, "model": champion.name, "version": champion.version},
                status_code=exc.status, headers=headers,
            )  # fmt: skip
        except Exception as exc:  # a bug: 500, and the replica lives on
            logger.exception("Prediction failed")
            self.metrics.errors.labels(self.model_name, replica, "internal").inc()
            return JSONResponse(
                {"error": f"{type(exc).__name__}: {exc}", "model": champion.name,
                 "version": champion.version},
                status_code=500, headers=headers,
            )  # fmt: skip
        request_id = uuid.uuid4().hex
        predictions = [
            {**{key: values[i] for key, values in ids.items()}, names.SCORE_COLUMN: float(score),
             "imputed": imputed[i]}
            for i, score in enumerate(scores)
        ]  # fmt: skip
        self._record(champion, plog.ROLE_CHAMPION, mode, request_id, ids, frame, scores, imputed)
        self.metrics.rows.labels(
            self.model_name, replica, champion.version, plog.ROLE_CHAMPION
        ).inc(len(scores))
        flagged = sum(1 for row in imputed if row)
        if flagged:
            self.metrics.imputed_rows.labels(self.model_name, replica, champion.version).inc(
                flagged
            )
        shadow = self.shadow
        if shadow is not None:
            self._score_shadow(shadow, mode, request_id, ids, frame, imputed)
        self.metrics.requests.labels(self.model_name, replica, champion.version, mode, "200").inc()
        self.metrics.latency.labels(self.model_name, replica, champion.version, mode).observe(
            time.perf_counter() - started
        )
        return JSONResponse(
            {"model": champion.name, "version": champion.version, "request_id": request_id,
             "predictions": predictions},
            headers=headers,
        )  # fmt: skip

    # --- request handling -----------------------------------------------------------------
    def _by_entity(self, champion: ServedModel, request: EntityRequest) -> tuple[Any, ...]:
        import pandas as pd

        try:
            values = online_values(self.store, champion.refs, request.ids)
        except Exception as exc:  # Redis restarting, a network partition: not a bug
            raise ServingUnavailable(
                f"the online store did not answer ({type(exc).__name__}: {exc}); retry shortly",
                "online_store",
            ) from exc
        features = champion.feature_names
        unknown = unknown_entities(request.ids, values, features)
        if unknown:
            raise ServingRequestError(
                404,
                f"unknown entity id(s) {unknown[:10]}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
                + ": the online store has no features for them (no such entity, or not "
                "materialized yet)",
                "unknown_entity",
            )
        frame = pd.DataFrame({name: values[name] for name in features})
        return frame, request.ids, missing_per_row(values, features)

    def _by_features(self, champion: ServedModel, request: FeatureRequest) -> tuple[Any, ...]:
        import pandas as pd

        frame = pd.DataFrame(request.rows, columns=champion.feature_names)
        return frame, {}, request.nulls

    def _score_shadow(
        self, shadow: ServedModel, mode: str, request_id: str, ids: dict[str, list[Any]],
        frame: Any, imputed: list[list[str]],
    ) -> None:  # fmt: skip
        """Score the same rows with the challenger, for the log only: its answer is never
        returned, and its failure never fails the request."""
        try:
            scores = shadow.score(frame[shadow.feature_names])
        except Exception as exc:
            logger.warning("Shadow v%s could not score: %s", shadow.version, exc)
            self.metrics.errors.labels(self.model_name, self.metrics.replica, "shadow").inc()
            return
        self._record(shadow, plog.ROLE_SHADOW, mode, request_id, ids, frame, scores, imputed)
        self.metrics.rows.labels(
            self.model_name, self.metrics.replica, shadow.version, plog.ROLE_SHADOW
        ).inc(len(scores))

    def _record(
        self, served: ServedModel, role: str, mode: str, request_id: str,
        ids: dict[str, list[Any]], frame: Any, scores: Any, imputed: list[list[str]],
    ) -> None:  # fmt: skip
        now = datetime.now(UTC)
        # Column by column (`tolist` gives Python values, as `to_dict` would): `to_dict(
        # orient="records")` cost a sixth of a one-row request.
        features = list(frame.columns)
        records = [dict(zip(features, row, strict=True))
                   for row in zip(*(frame[f].tolist() for f in features), strict=True)]  # fmt: skip
        rows = [
            {plog.COL_SERVED_AT: now, plog.COL_REQUEST_ID: request_id,
             plog.COL_MODEL: served.name, plog.COL_VERSION: served.version,
             plog.COL_ROLE: role, plog.COL_MODE: mode,
             **{key: values[i] for key, values in ids.items()},
             **records[i],
             names.SCORE_COLUMN: float(scores[i]), plog.COL_IMPUTED: ",".join(imputed[i])}
            for i in range(len(records))
        ]  # fmt: skip
        self.log.append(served.name, rows)


def build(config: ServingConfig, tracking: MlflowTracking, feast: FeastFeatureStore,
          default_log_dir: Path) -> serve.Application:  # fmt: skip
    """The application, bound to its configuration: what `serve.run` deploys.
    `default_log_dir`: the prediction log's folder unless the block names a folder or a
    database."""
    return ChampionServer.options(num_replicas=config.num_replicas).bind(
        config, tracking, feast, str(default_log_dir)
    )
