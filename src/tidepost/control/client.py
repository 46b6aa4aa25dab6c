"""The command-line side of the control socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


def socket_path(spool: Path) -> Path:
    """Where the daemon of this spool listens."""
    return spool / "control.sock"


def request(spool: Path, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any] | None:
    """Send one request; None when no daemon is listening.

    Raises PermissionError when a daemon listens but this user may not
    command it (the socket is the daemon's account's, mode 0600).
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path(spool)))
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except PermissionError:
        raise
    except OSError:
        return None
    return json.loads(data) if data else None
