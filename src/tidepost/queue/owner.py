"""Queue-runner identities for leases, and whether a runner is still alive.

An owner is `HOST:PID:START`, START being the process start time in clock
ticks from /proc, so a recycled PID does not look like the old runner.  A
runner on another host (several nodes on one PostgreSQL queue) cannot be
checked from here: it counts as alive and its leases end by expiry.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The start time of `pid` from /proc, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def this_runner() -> str:
    """The owner string of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '0'}"


def runner_alive(owner: str) -> bool:
    """True unless `owner` is a process on this host that has ended."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    return _start_time(int(pid_text)) == start
