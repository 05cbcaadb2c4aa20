"""The `driftloop` command: run the embedded stack and feed its demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from driftloop.core import names
from driftloop.core.settings import DriftloopSettings, get_settings, quiet_environment


def _parse_shift(values: list[str]) -> dict[str, float]:
    shifts = {}
    for item in values:
        column, _, amount = item.partition("=")
        try:
            shifts[column] = float(amount)
        except ValueError:
            raise SystemExit(f"--shift expects COLUMN=STD_UNITS, got {item!r}") from None
    return shifts


def _new_data_check_hint() -> str:
    """Which deployment will find an unannounced batch, and when: read from prefect.yaml."""
    from deployments import find_deployment, schedule_crons
    from driftloop.app.demo import DEMO_NEW_DATA_DEPLOYMENT

    try:
        crons = schedule_crons(find_deployment(DEMO_NEW_DATA_DEPLOYMENT))
    except Exception as exc:  # prefect.yaml is edited by hand; a hint must not fail
        return f"The new-data check will find it on its next scheduled run ({exc})."
    when = f" ({', '.join(crons)})" if crons else ""
    return (
        f"The {DEMO_NEW_DATA_DEPLOYMENT} deployment will find it on its next scheduled run{when}."
    )


def _apply_automations(settings: DriftloopSettings) -> int:
    """Create or update the notification block and the automations that send through it, on
    the Prefect server this process is configured for (PREFECT_API_URL or the active Prefect
    profile, as for `prefect deploy`). They are not in prefect.yaml: `make deploy` runs this
    after `prefect deploy --all`. Returns an exit code."""
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        # Without a server Prefect would start a temporary one and the automations would
        # vanish with it.
        print(
            "PREFECT_API_URL is not set: point it at the Prefect server to configure "
            "(e.g. http://127.0.0.1:4200/api).",
            file=sys.stderr,
        )
        return 1
    from deployments.notifications import NOTICES
    from driftloop.app import bootstrap

    try:
        block_id, written = bootstrap.ensure_notifications(settings)
    except Exception as exc:  # unreachable server, or DRIFTLOOP_NOTIFY_BLOCK names no block
        print(
            f"Could not apply the automations to {api_url}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    block = settings.notify_block or f"{names.NOTIFY_BLOCK} (a webhook to {settings.notify_url})"
    print(
        f"Notification automations on {api_url}: {written} created or updated, "
        f"{len(NOTICES) - written} unchanged; they send through {block} (block {block_id})."
    )
    if not settings.notify_block:
        print(
            "Set DRIFTLOOP_NOTIFY_BLOCK=<block type slug>/<name> to send through another "
            "notification block (Slack, e-mail, ...)."
        )
    return 0


def _announce(revision) -> None:
    """What a post-push hook in a data repo does: tell Prefect a new revision exists. Shares
    the new-data check's once-per-revision claim, so the revision gives one event either way."""
    from blocks.dvc import DvcDataset
    from driftloop.core.dataset_events import announce_revision, read_ledger

    try:
        dataset = DvcDataset.load_named(names.DEFAULT_BLOCK)
        event_id = announce_revision(
            dataset.name, revision.commit, revision.md5, revision.rows, revision.path,
            by="driftloop add-batch",
        )  # fmt: skip
        # Claimed first by someone else: the new-data check, or a training that was already
        # running and found this revision the newest ("latest wins").
        entry = (read_ledger(dataset.name, revision.md5) or {}) if event_id is None else {}
    except Exception as exc:  # the server may be down; the scheduled check catches up
        print(
            f"Could not announce {revision.tag} to Prefect ({type(exc).__name__}: {exc}).\n"
            + _new_data_check_hint()
        )
        return
    if event_id is None:
        if entry.get("training_run"):
            print(f"{revision.tag} is covered already: flow run {entry['training_run']} "
                  f"trains it (recorded by {entry.get('seen_by') or 'a training'})")  # fmt: skip
        else:
            print(f"{revision.tag} was announced already (by {entry.get('seen_by') or '?'})")
    else:
        print(f"Emitted {names.EVENT_DATASET_UPDATED} for {revision.tag} (event {event_id})")


def _set_up(settings: DriftloopSettings, with_demo: bool) -> int:
    """`driftloop setup`: what `up` does to its own server, to the one at PREFECT_API_URL."""
    from driftloop.app.stack import set_up

    env = settings.process_env()
    os.environ.update(env)
    print(f"Preparing {env['PREFECT_API_URL']} for driftloop ({settings.profile} profile)")
    set_up(settings, env, with_demo=with_demo)
    print("Done.")
    return 0


def _stack_command(args: argparse.Namespace, settings: DriftloopSettings) -> int:
    """`up`, `down` and `setup`."""
    from driftloop.app import stack

    if args.command == "up":
        return stack.up(settings, with_demo=not args.no_demo)
    if args.command == "down":
        return stack.down(settings)
    if args.for_up is not None:
        # `up` stops its set-up with SIGINT; honour it even if `up` was started with SIGINT
        # ignored (a background job), which its children inherit.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            prepared = stack.prepare(settings, with_demo=not args.no_demo)
        except stack.StartupError as exc:  # a reason for the user, not a traceback
            print(f"  {exc}")
            return 1
        except KeyboardInterrupt:  # `up` is stopping and says so
            return 130
        args.for_up.write_text(prepared.to_json())
        return 0
    return _set_up(settings, with_demo=not args.no_demo)


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    # `make up | tee up.log` (or a test reading the pipe) should see each line as it happens.
    sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the embedded stack and its demo (foreground)")
    up.add_argument("--no-demo", action="store_true", help="start the services only")
    commands.add_parser("down", help="stop processes a killed `up` left behind")
    setup = commands.add_parser(
        "setup",
        help="prepare the Prefect server at PREFECT_API_URL as `up` prepares its own: block "
        "types and default blocks, the work pool, automations, the demo data, `prefect deploy "
        "--all` (compose's one-shot `setup` service); idempotent",
    )
    setup.add_argument("--no-demo", action="store_true", help="skip the demo data")
    # `up`'s own set-up, run by `up` in a child process (driftloop.app.stack.prepare): also
    # ends and resumes runs left in flight and starts the first training, whose id it writes
    # to the file named. Not for users: it assumes no worker serves the pool yet.
    setup.add_argument("--for-up", metavar="RESULT_FILE", type=Path, help=argparse.SUPPRESS)
    worker = commands.add_parser(
        "worker",
        help="serve the work pool with driftloop's worker (woken by events; PREFECT_API_URL)",
    )
    worker.add_argument("--pool", default=names.WORK_POOL, help="work pool to serve")
    worker.add_argument("--name", default=None, help="worker name")
    serve = commands.add_parser(
        "serve",
        help="serve the champion online on Ray Serve, on the Ray that RAY_ADDRESS or the "
        "driftloop-ray block names (`make up` runs it as its `serving` component)",
    )
    serve.add_argument("--block", default=names.DEFAULT_BLOCK, help="the driftloop-serving block")
    commands.add_parser(
        "automations",
        help="create or update the notification block and automations on the Prefect server "
        "at PREFECT_API_URL (`make deploy` runs it after `prefect deploy --all`)",
    )

    batch = commands.add_parser("add-batch", help="add a batch to the demo data registry")
    batch.add_argument("--rows", type=int, default=4000, help="customers in the batch")
    batch.add_argument("--seed", type=int, default=42)
    batch.add_argument(
        "--count", type=int, default=1, help="push this many batches back to back (seeds seed, "
        "seed+1, ...), each announced as it is pushed",
    )  # fmt: skip
    batch.add_argument("--drift", action="store_true", help="a clearly drifted batch")
    batch.add_argument(
        "--shift",
        action="append",
        default=[],
        metavar="COLUMN=STD",
        help="covariate shift of a numeric column in std units (repeatable)",
    )
    batch.add_argument("--label-shift", type=float, default=0.0, help="added to churn log-odds")
    batch.add_argument(
        "--concept-shift", type=float, default=0.0,
        help="concept drift: churn depends less (0.5: not at all, 1: inversely) on the features",
    )  # fmt: skip
    batch.add_argument(
        "--new-category",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="introduce a new category in a categorical column (repeatable)",
    )
    batch.add_argument(
        "--no-labels",
        action="store_true",
        help="feature rows only (traffic whose outcomes are not known yet): no new revision",
    )
    batch.add_argument(
        "--no-announce",
        action="store_true",
        help="do not emit driftloop.dataset.updated (the new-data check will find the batch)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    # Prefect keeps its profiles and caches under PREFECT_HOME (~/.prefect by default); every
    # command keeps them in the state folder unless the caller chose a home for Prefect.
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))

    if args.command in ("up", "down", "setup"):
        return _stack_command(args, settings)
    if args.command == "worker":
        from driftloop.app.worker import main as run_worker

        return run_worker(["--pool", args.pool] + (["--name", args.name] if args.name else []))
    if args.command == "serve":
        from driftloop.app.serving.run import main as run_serving

        return run_serving(["--block", args.block])
    if args.command == "automations":
        return _apply_automations(settings)
    if args.command == "add-batch":
        from driftloop.app.demo.churn import STRONG_DRIFT, DriftSpec
        from driftloop.app.demo.setup import add_batch

        os.environ.update(settings.process_env())
        custom = DriftSpec(
            covariate_shift=_parse_shift(args.shift),
            label_shift=args.label_shift,
            concept_shift=args.concept_shift,
            new_categories=dict(item.split("=", 1) for item in args.new_category),
        )
        drift = STRONG_DRIFT if args.drift and not custom.is_drifted else custom
        if args.count < 1:
            raise SystemExit(f"--count must be at least 1, got {args.count}")
        from driftloop.app.stack import narration_to

        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        for i in range(args.count):
            # What DVC and Feast print about the commit goes to the log, not the terminal.
            with narration_to(settings.logs_dir / "demo-setup.log"):
                revision = add_batch(
                    settings, rows=args.rows, drift=drift, seed=args.seed + i,
                    labels=not args.no_labels,
                )  # fmt: skip
            if revision is None:
                print(f"Added {args.rows} customers' feature rows without labels (no revision)")
                continue
            print(
                f"Added {revision.tag} ({revision.commit[:8]}): {revision.rows} labeled rows, "
                f"md5 {revision.md5}"
            )
            if not args.no_announce:
                _announce(revision)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
