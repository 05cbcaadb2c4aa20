"""`mlflow server`, without the parent process that only waits for the server.

`mlflow server` prepares the server (it checks and migrates the backend store and builds the
server's environment: stores, artifact destination, boot id), then starts uvicorn as a child
process and waits for it, forwarding signals. That waiting parent has imported MLflow's CLI and
held about 200 MB (PSS) in an idle `driftloop up`, doing nothing. This module runs MLflow's own
CLI unchanged, but when the CLI starts the server, the process *becomes* the server
(`os.execvpe`) instead of starting it as a child. The supervisor then watches, health-checks
and stops the server process itself.

MLflow's server job execution is switched off here: its job runner is started by the waiting
parent, after the server, so it cannot work without one. driftloop runs no MLflow jobs (they
serve GenAI evaluation and trace roll-ups).

`mlflow.server._exec_cmd` is private: it is patched here and nowhere else, MLflow is pinned in
uv.lock, and tests/test_mlflow_server.py fails, naming this module, if `mlflow server` stops
starting its server through it.

Usage (the arguments are `mlflow server`'s):

    python -m driftloop.app._mlflow_server --backend-store-uri sqlite:///mlflow.db --port 5000
"""

from __future__ import annotations

import os
import sys
from typing import Any

JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def _become(cmd: list[str], *, extra_env: dict[str, str] | None = None, **_: Any) -> None:
    """What `mlflow server` calls to start its server child: replace this process instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **(extra_env or {})})


def main(argv: list[str]) -> None:
    """Run `mlflow server <argv>` in this process, which becomes the server."""
    import mlflow.server
    from mlflow.cli import cli

    if not hasattr(mlflow.server, "_exec_cmd"):
        raise RuntimeError(
            "mlflow.server._exec_cmd is gone: `mlflow server` starts its server another way "
            "in this MLflow; update driftloop/app/_mlflow_server.py"
        )
    os.environ[JOB_EXECUTION] = "false"
    mlflow.server._exec_cmd = _become  # type: ignore[attr-defined]
    cli.main(["server", *argv], prog_name="mlflow")


if __name__ == "__main__":
    main(sys.argv[1:])
