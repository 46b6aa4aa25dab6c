"""The operator channel to a running daemon: a Unix socket in the spool.

One JSON object per line in each direction.  Requests: `{"cmd": "wake"}`
(mail was queued by another process, or `tidepost queue release/requeue`
made recipients due), `{"cmd": "hold", "route": R}`,
`{"cmd": "release", "route": R}`, `{"cmd": "status"}`.  The socket is
created mode 0600: whoever may write the spool may command the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("tidepost.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class ControlServer:
    """Serves control requests with one handler per command name."""

    def __init__(self, path: Path, handlers: dict[str, Handler]):
        self._path = path
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket, replacing a stale one left by a crash."""
        if self._path.exists():
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path),
                                                       limit=MAX_REQUEST)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one connection until the client closes it."""
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        """Dispatch one request line to its handler."""
        try:
            request = json.loads(line)
            handler = self._handlers[request["cmd"]]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "unknown or malformed request"}
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("control request %s failed", request.get("cmd"))
            return {"ok": False, "error": str(exc)}
