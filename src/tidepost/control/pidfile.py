"""One daemon per spool: an exclusive lock on SPOOL/tidepost.pid.

Two daemons on one spool would both be correct about delivery (claims see
to that) but would fight over the control socket and double the polling;
the second is refused with the first one's PID.  The lock dies with the
process, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """Another daemon holds the spool; str() names its PID."""


def lock_spool(spool: Path) -> int:
    """Take the spool's daemon lock and write our PID; returns the open descriptor."""
    path = spool / "tidepost.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(f"another tidepost serve (pid {other}) runs on {spool}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
