"""Render prefect.yaml from the deployment specs: `python -m deployments.render [--check]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deployments import DEPLOYMENTS
from driftloop.core.settings import PROJECT_ROOT

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"

HEADER = """\
# GENERATED from deployments/*.py by `make prefect.yaml`; do not edit by hand.
# Deploy to any Prefect server with:   prefect deploy --all
# and run a worker on the pool with:   prefect worker start --pool driftloop-process
# With no pull step, workers load the flows from the directory you deployed from; add a
# `pull:` git_clone step here (via deployments/render.py) to run on other machines.
"""


def render() -> str:
    import prefect

    document = {
        "name": "driftloop",
        "prefect-version": prefect.__version__,
        "build": None,
        "push": None,
        "deployments": [spec.to_yaml() for spec in DEPLOYMENTS],
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if prefect.yaml is stale")
    parser.add_argument("--output", type=Path, default=PREFECT_YAML)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `make prefect.yaml`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
