"""driftloop's Prefect server (driftloop/app/_prefect_server.py): Prefect's SQLite configuration,
with its write transactions begun IMMEDIATE.

The tests run Prefect's own `AioSqliteConfiguration` (its engine, its PRAGMAs, its
`begin_transaction`) on a real SQLite file, in a process of their own, since the module
changes a class for the whole process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Two write transactions as the server runs them: A reads, B writes and commits while A is
# open, then A writes. Prints what each did.
RACE = """
import asyncio, json, sys
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

if sys.argv[2] == "driftloop":
    from driftloop.app._prefect_server import immediate_sqlite_writes
    immediate_sqlite_writes()


async def main():
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{sys.argv[1]}")
    engine = await config.engine()
    async with engine.begin() as connection:
        await connection.execute(sa.text("CREATE TABLE ledger (value TEXT)"))
    a_read, outcome = asyncio.Event(), {}

    async def transaction(name, read_first):
        try:
            async with await config.session(engine) as session:
                async with config.begin_transaction(session):
                    if read_first:
                        await session.execute(sa.text("SELECT count(*) FROM ledger"))
                        a_read.set()
                        await asyncio.sleep(0.5)  # B writes meanwhile (or waits for A)
                    else:
                        await a_read.wait()
                    await session.execute(sa.text(f"INSERT INTO ledger VALUES ('{name}')"))
            outcome[name] = "committed"
        except Exception as exc:
            outcome[name] = str(exc).splitlines()[0]
            a_read.set()

    await asyncio.gather(transaction("A", True), transaction("B", False))
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.text("SELECT value FROM ledger"))).scalars()
        outcome["rows"] = sorted(rows)
    await engine.dispose()
    print(json.dumps(outcome))


asyncio.run(main())
"""


def race(tmp_path: Path, server: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RACE, str(tmp_path / f"{server}.db"), server],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_prefects_deferred_write_transactions_fail_on_a_concurrent_write(tmp_path):
    # Why the module exists. If this fails, Prefect no longer begins its SQLite write
    # transactions DEFERRED (or no longer calls begin_transaction): re-check, and remove
    # driftloop/app/_prefect_server.py if it is no longer needed.
    outcome = race(tmp_path, "prefect")
    assert outcome["B"] == "committed"
    assert "database is locked" in outcome["A"], outcome
    assert outcome["rows"] == ["B"]


def test_driftloops_server_queues_the_writer_instead(tmp_path):
    outcome = race(tmp_path, "driftloop")
    assert outcome == {"A": "committed", "B": "committed", "rows": ["A", "B"]}, outcome


def test_the_wrapped_method_keeps_its_signature_and_wraps_once():
    # The module checks Prefect's signature itself before it wraps (and raises naming itself),
    # so a changed signature fails this run too.
    done = subprocess.run(
        [sys.executable, "-c", "from driftloop.app._prefect_server import immediate_sqlite_writes\n"
         "from prefect.server.database.configurations import AioSqliteConfiguration as C\n"
         "immediate_sqlite_writes(); first = C.begin_transaction\n"
         "immediate_sqlite_writes(); assert C.begin_transaction is first"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
