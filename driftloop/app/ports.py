"""Free TCP ports that no other process is about to take.

The usual trick, binding port 0 and handing out what the kernel chose, picks from the kernel's
ephemeral range (32768-60999 on Linux). That is the range every process binding port 0 draws
from at any moment: Ray's head starts a dozen gRPC servers that way over its first seconds. A
port picked there, released and bound a second later by a slower server (Prefect's takes ~5 s
to import) can be taken in between. CI saw exactly that: Prefect's health check was answered
by a Ray agent's HTTP/2 preface. So ports are chosen *below* the ephemeral range and above
Ray's worker ports (`--min-worker-port` 10002 to `--max-worker-port` 19999), where nothing
binds without being told to.

Example:
    >>> port = free_port()
    >>> 20000 <= port < 32768
    True
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's default worker ports end here; Prefect (4200), MLflow (5000) and Ray's fixed defaults
# (6379, 8265, 10001) are all below it.
FIRST_PORT = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds (Linux's default where it cannot be read)."""
    try:
        low, high = _EPHEMERAL_RANGE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    # The wildcard address conflicts with any bind of the port, on loopback or elsewhere.
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port(part: int = 0, parts: int = 1) -> int:
    """A TCP port that is free now and outside the ephemeral range; never the same one twice
    in a process. `part` of `parts` chooses a disjoint slice of the range, so that concurrent
    processes (pytest-xdist workers) cannot pick the same port.

    Falls back to the kernel's choice when the ephemeral range leaves no room below it."""
    if not 0 <= part < parts:
        raise ValueError(f"free_port: part {part} is not in 0..{parts - 1}")
    top = ephemeral_range()[0]
    if top - FIRST_PORT < 100 * parts:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    size = (top - FIRST_PORT) // parts
    low = FIRST_PORT + part * size
    candidates = [port for port in range(low, low + size) if port not in _handed_out]
    random.shuffle(candidates)
    for port in candidates:
        if _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"free_port: no free port in {low}..{low + size - 1}")
