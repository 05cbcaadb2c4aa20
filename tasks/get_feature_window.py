"""Drift step 2: the production features of a time window, from the Feast offline store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.feast import FeastFeatureStore
from driftloop.core.contracts import ResolvedFeatures
from driftloop.core.errors import NotEnoughDataError
from driftloop.core.params import DriftWindow
from tasks._policy import IO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


def _entity_rows(store, features: ResolvedFeatures, start: datetime | None, end: datetime):
    """(join keys, event_timestamp) of every feature row the views hold in [start, end]."""
    import pandas as pd
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    offline = get_offline_store_from_config(store.config.offline_store)
    frames = []
    for view_name in sorted({ref.split(":")[0] for ref in features.refs}):
        view = store.get_feature_view(view_name)
        source = view.batch_source
        keys = [store.get_entity(e).join_key for e in view.entities]
        rows = offline.pull_all_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=keys,
            feature_name_columns=[],
            timestamp_field=source.timestamp_field,
            start_date=start or datetime(1970, 1, 1, tzinfo=UTC),
            end_date=end,
        ).to_df()
        frames.append(rows[[*keys, source.timestamp_field]].rename(
            columns={source.timestamp_field: "event_timestamp"}
        ))  # fmt: skip
    rows = pd.concat(frames, ignore_index=True).drop_duplicates()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    return rows


@task(name="get-feature-window", cache_policy=UNCACHED, **IO_RETRIES)
def get_feature_window(
    feast: FeastFeatureStore, features: ResolvedFeatures, window: DriftWindow, min_rows: int
) -> tuple[pd.DataFrame, datetime, datetime]:
    """Features as of each entity row observed in the window (a point-in-time join, as for
    training), so that they compare like for like with the training reference.

    The window ends at `window.end`, or at the newest feature row in the offline store.
    Fails if the window holds fewer than `min_rows` rows.
    """
    logger = get_run_logger()
    store = feast.store()
    if window.end is None:
        # The newest data, wherever the clock is: a demo's or a backfill's data may be older.
        import pandas as pd

        now = datetime.now(UTC)
        rows = _entity_rows(store, features, None, now)
        newest = rows["event_timestamp"].max()
        end = now if pd.isna(newest) else newest.to_pydatetime()
        start = end - timedelta(days=window.days)
        rows = rows[rows["event_timestamp"] >= start]
    else:
        end = window.end if window.end.tzinfo else window.end.replace(tzinfo=UTC)
        start = end - timedelta(days=window.days)
        rows = _entity_rows(store, features, start, end)
    if len(rows) > window.max_rows:
        rows = rows.nlargest(window.max_rows, "event_timestamp")
    if len(rows) < min_rows:
        raise NotEnoughDataError(
            f"The feature window {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC holds "
            f"{len(rows)} rows in the offline store of {feast.repo_path} (views "
            f"{sorted({r.split(':')[0] for r in features.refs})}); the drift policy needs at "
            f"least {min_rows}. Widen `window.days` or lower the policy's min_rows."
        )
    current = store.get_historical_features(entity_df=rows, features=features.refs).to_df()
    logger.info(
        "Window %s to %s: %d rows of %d features", start, end, len(current), len(features.refs)
    )
    return current, start, end
