"""A warm engine: a fork server that has imported Prefect and the flows before its runs come.

driftloop's worker keeps one of these (`driftloop.app.warm_engines`). It is started as
`python -m driftloop.app.engine_process --report-fd N MODULE...`, in the working directory and
with the environment its runs will have, except Prefect's per-run hand-off variables
(`PREFECT__*`: the flow-run id, the control channel's port and token...), which do not exist
yet. It imports Prefect's flow engine and the named modules (the work pool's flow modules),
then forks one child per run. A fork takes milliseconds and shares the imported pages, so
runs that arrive together (a promotion starts three) all start warm, and there is no window
after a run in which the next one finds no engine ready.

The protocol, one line per message:

- stdin, from the worker: a run to start, `{"run": <flow-run id>, "env": <hand-off
  variables>, "cwd": <folder or null>}` (`request_line`). End of input: no more runs.
- fd N, to the worker: `forked <run> <pid>` once a run's child exists, `exited <pid> <code>`
  when it ended (a negative code is the signal that ended it, as `Popen.returncode` says),
  and `ready` once every module is imported.

A run that arrives while the imports are under way is forked at once, between two modules:
its child imports what it lacks itself, as a cold engine would, with a head start, and the
fork server goes on importing for the runs after it.

Each child is its run's process, as a cold engine is: it starts a session of its own (a run
outlives its worker, and Prefect's cancellation signals its process group), works in its
run's folder, reads nothing from the worker, and runs `prefect.engine` exactly as `python -m
prefect.engine` would. It names itself after its run (`fork_name`, the kernel's process name
in `/proc/<pid>/comm`): its environment (`/proc/<pid>/environ`) is the fork server's, which
cannot name the run, and the zombie sweep reads the name instead (`driftloop.app.recovery`).

Only the fork server learns its children's exit codes. After the end of its input it waits
for the children it has, reports each exit, and then exits 0; if the worker is gone, the
reports go nowhere and it still reaps them. It imports and forks, and does nothing else: no
Prefect client, no event loop, no thread of its own, so a child starts from a quiet process
(a thread running at the fork would leave its locks held in the child). Native libraries that
keep threads (OpenBLAS, pyarrow's jemalloc) re-create them in the child themselves.

Example:
    >>> fork_name("1b3c5d7e-9f00-4a1b-8c2d-3e4f5a6b7c8d")
    'dl-1b3c5d7e9f00'
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# What `python -m prefect.engine` imports before it runs a flow: the bulk of its start time.
# Then what a run imports lazily on its way to Running (found in a py-spy recording of forked
# runs): the deployment's pull steps, the first event loop's backend, the first console log
# line, and Prefect's vendored croniter, which a deployment's cron schedule loads (its import
# runs `file` on the interpreter).
ENGINE_IMPORTS = (
    "prefect", "prefect.flow_engine", "prefect.flows", "prefect._internal.metrics",
    "prefect.deployments.steps", "anyio._backends._asyncio", "rich._emoji_codes",
    "prefect._vendor.croniter",
)  # fmt: skip
HANDOFF_PREFIX = "PREFECT__"
REPORT_FORKED = "forked"
REPORT_EXITED = "exited"
REPORT_READY = "ready"


def fork_name(flow_run_id: str) -> str:
    """The process name (15 characters, the kernel's limit) of the child that runs a flow run:
    48 bits of its id, enough to tell a machine's runs apart."""
    return "dl-" + flow_run_id.replace("-", "")[:12]


def request_line(flow_run_id: str, env: Mapping[str, str], cwd: str | None) -> bytes:
    """The line the worker writes to the fork server to start a run.

    Example:
        >>> request_line("1b3c", {"PREFECT__FLOW_RUN_ID": "1b3c"}, None)
        b'{"run": "1b3c", "env": {"PREFECT__FLOW_RUN_ID": "1b3c"}, "cwd": null}\\n'
    """
    return (json.dumps({"run": flow_run_id, "env": dict(env), "cwd": cwd}) + "\n").encode()


def preimport(modules: Sequence[str], between: Callable[[], None] = lambda: None) -> None:
    """Import Prefect's engine, then the flows' modules, calling `between()` before each of
    the flows' modules (the fork server starts the runs that came meanwhile there). A module
    that fails to import is left out: a run that needs it imports it again and reports the
    error on the run, as a cold engine would.

    Example:
        >>> preimport(["json", "no_such_module_here"])
        >>> "no_such_module_here" in sys.modules
        False
    """
    for index, module in enumerate((*ENGINE_IMPORTS, *modules)):
        if index >= len(ENGINE_IMPORTS):
            between()
        try:
            importlib.import_module(module)
        except Exception as exc:  # reported on the run that needs it, not here
            print(f"warm engine: {module} not pre-imported ({type(exc).__name__}: {exc})",
                  file=sys.stderr)  # fmt: skip


def run_engine(handoff: Mapping[str, str]) -> None:
    """Run `prefect.engine` as its `__main__`, with the run's hand-off environment."""
    unknown = [key for key in handoff if not key.startswith(HANDOFF_PREFIX)]
    if unknown:  # the worker sends nothing else; anything else would bypass its env check
        raise SystemExit(f"warm engine: not hand-off variables: {sorted(unknown)}")
    os.environ.update(handoff)
    sys.argv = [sys.argv[0]]  # the engine takes its run id from argv[1] if there is one
    with warnings.catch_warnings():
        # runpy warns when the module was imported already; it runs as __main__ all the same.
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


class ForkServer:
    """Reads run requests from stdin, forks a child for each, reports on `report_fd`."""

    def __init__(self, report_fd: int) -> None:
        self.report_fd = report_fd
        self.children: set[int] = set()
        self.closed = False  # end of input: no more runs
        self._pending = b""
        # SIGCHLD wakes the loop's select through this pipe (Python writes the signal number).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def say(self, *words: object) -> None:
        # If the worker is gone, its runs go on, and they are still reaped here.
        with contextlib.suppress(OSError):
            os.write(self.report_fd, (" ".join(map(str, words)) + "\n").encode())

    def pump(self, timeout: float | None) -> None:
        """Wait up to `timeout` for input or a child's exit; start the runs that came, report
        the children that ended."""
        readable = [self._wake_r] if self.closed else [sys.stdin.fileno(), self._wake_r]
        ready, _, _ = select.select(readable, [], [], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 4096)
        self._reap()
        if sys.stdin.fileno() in ready:
            data = os.read(sys.stdin.fileno(), 1 << 16)
            self.closed = not data
            self._pending += data
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                if line.strip():
                    self._fork(json.loads(line))

    def serve(self, modules: Sequence[str]) -> int:
        """Import, starting runs between modules; then start runs until the end of input,
        and wait for the children."""
        preimport(modules, between=lambda: self.pump(0))
        self.say(REPORT_READY)
        while not self.closed or self.children:
            self.pump(1.0 if self.closed else None)
        return 0

    def _reap(self) -> None:
        # Only the runs' children, by PID: an import may run a subprocess of its own (croniter
        # runs `file`), whose exit status belongs to the code that waits for it.
        for child in list(self.children):
            try:
                pid, status = os.waitpid(child, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its code is unknown
                self.children.discard(child)
                continue
            if pid == 0:
                continue
            self.children.discard(child)
            self.say(REPORT_EXITED, child, os.waitstatus_to_exitcode(status))

    def _fork(self, request: dict[str, object]) -> None:
        pid = os.fork()
        if pid == 0:
            self._become_run(request)  # never returns: the child exits when its run ends
        self.children.add(pid)
        self.say(REPORT_FORKED, request["run"], pid)

    def _become_run(self, request: dict[str, object]) -> None:
        """In the child: leave the fork server's session, pipes and signal handling, then run
        the engine. Its exit (SystemExit, or an exception) ends this process through the
        interpreter's normal shutdown, so Prefect's exit handlers flush its logs and events."""
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w, self.report_fd):
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, sys.stdin.fileno())
        os.close(null)
        run = str(request["run"])
        Path("/proc/self/comm").write_text(fork_name(run))
        if request.get("cwd"):
            os.chdir(str(request["cwd"]))
        env = request.get("env")
        run_engine(env if isinstance(env, dict) else {})
        raise SystemExit(0)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.app.engine_process")
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    return ForkServer(args.report_fd).serve(args.modules)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
