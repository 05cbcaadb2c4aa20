"""The serving application: the champion online, on Ray Serve.

- `model`: a registry version by alias, with the features and entity keys it is served on.
- `prediction_log`: what was served, appended to parquet in batches.
- `metrics`: Prometheus metrics of one replica.
- `app`: the Ray Serve deployment (FastAPI routes `/predict`, `/model`, `/health`,
  `/metrics`, `/admin/reload`).
- `run`: `driftloop serve`, which starts it on the stack's Ray and keeps it up.
"""
