"""`prefect server start`, with every SQLite write transaction begun IMMEDIATE.

On SQLite, Prefect's server opens its write transactions (`session_context(begin_transaction=
True)`, about a hundred places: creating a flow run, updating a variable or a run's labels,
an automation's buckets) with `BEGIN DEFERRED`, and only the few with `with_for_update=True`
with `BEGIN IMMEDIATE` (`AioSqliteConfiguration.begin_transaction`). A deferred transaction
reads first and takes the write lock only at its first write. If another connection wrote
in between, SQLite refuses at once with "database is locked" (SQLITE_BUSY): it does not wait
out `busy_timeout` there, because waiting could deadlock. The API answers such a request 503,
and Prefect's clients retry it after 2, 4, 8 s.

Measured in a `driftloop up` on this 2-core machine: the training flow's ledger write (a
Variable update) waited 2 s, and once 6 s, in those retries while a run wrote its states and
logs beside it; the automations' `INSERT INTO flow_run` and `automation_bucket` and the
worker's label updates failed the same way (`PREFECT_API_LOG_RETRYABLE_ERRORS=true` shows each
in the server's log).

Begun IMMEDIATE, a write transaction takes the write lock at `BEGIN`, where SQLite does wait
(`busy_timeout`, 60 s in Prefect's configuration): writers queue instead of failing and
sleeping. Reads outside transactions are unchanged (WAL: they never wait for a writer), and
so is PostgreSQL (a different configuration class).

`AioSqliteConfiguration.begin_transaction` is Prefect's server internals, not a public API:
it is wrapped here and nowhere else, Prefect is pinned exactly, and tests/test_prefect_server.py
fails, naming this module, if its signature changes or if Prefect begins write transactions
IMMEDIATE by itself (then this module can go).

Usage (the arguments are `prefect server start`'s; `server_argv` builds this command):

    python -m driftloop.app._prefect_server --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

# Set on the wrapped method, so that wrapping twice is a no-op.
_MARK = "__driftloop_immediate__"


def immediate_sqlite_writes() -> None:
    """Make the SQLite configuration begin every write transaction IMMEDIATE."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.begin_transaction
    if getattr(original, _MARK, False):
        return
    parameters = list(inspect.signature(original).parameters)
    if parameters != ["self", "session", "with_for_update"]:
        raise RuntimeError(
            "prefect.server.database.configurations.AioSqliteConfiguration.begin_transaction "
            f"takes {parameters} in this Prefect, not (self, session, with_for_update): "
            "update driftloop/app/_prefect_server.py"
        )

    @asynccontextmanager
    async def begin_immediate(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        async with original(self, session, with_for_update=True) as transaction:
            yield transaction

    setattr(begin_immediate, _MARK, True)
    AioSqliteConfiguration.begin_transaction = begin_immediate  # type: ignore[method-assign]


def server_argv(host: str, port: int) -> list[str]:
    """The command that starts driftloop's Prefect server (this module) on host:port.

    Example:
        >>> server_argv("127.0.0.1", 4200)[1:]
        ['-m', 'driftloop.app._prefect_server', '--host', '127.0.0.1', '--port', '4200']
    """
    return [sys.executable, "-m", __name__, "--host", host, "--port", str(port)]


def main(argv: list[str]) -> None:
    """Run `prefect server start <argv>` in this process with immediate SQLite writes."""
    immediate_sqlite_writes()
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *argv]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
