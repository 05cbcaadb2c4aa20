"""Ports for the stacks the tests and benchmarks start: outside the range that port-0 binds
draw from, disjoint between xdist workers, never handed out twice."""

from __future__ import annotations

import socket

import pytest

from driftloop.app import ports


def test_ports_are_below_the_ephemeral_range_and_above_rays_worker_ports():
    low, _ = ports.ephemeral_range()
    chosen = [ports.free_port() for _ in range(50)]
    assert all(ports.FIRST_PORT <= port < low for port in chosen)
    assert len(set(chosen)) == len(chosen), "a port was handed out twice"


def test_parts_are_disjoint():
    first = {ports.free_port(0, 2) for _ in range(30)}
    second = {ports.free_port(1, 2) for _ in range(30)}
    assert max(first) < min(second)


def test_a_port_in_use_is_not_chosen():
    # Occupy every port of a small slice but one: that one must be returned.
    low, _ = ports.ephemeral_range()
    parts = (low - ports.FIRST_PORT) // 100  # slices of ~100 ports
    part = parts - 1
    size = (low - ports.FIRST_PORT) // parts
    start = ports.FIRST_PORT + part * size
    slice_ = range(start, start + size)
    keep = next(p for p in reversed(slice_) if p not in ports._handed_out and ports._bindable(p))
    held = []
    try:
        for port in slice_:
            if port == keep:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        assert ports.free_port(part, parts) == keep
    finally:
        for sock in held:
            sock.close()


def test_a_part_outside_the_parts_is_refused():
    with pytest.raises(ValueError, match=r"part 2 is not in 0\.\.1"):
        ports.free_port(2, 2)
