"""The replies of one conversation on their way out, and the writer they go to.

`Outbox(writer, drain_timeout)` queues reply octets (`add`), sends them in
one write (`flush`, which waits at most `drain_timeout` seconds for a client
that does not read: TimeoutError), and ends the connection: `last_words`
writes what is queued plus a final reply without waiting, `hang_up` closes,
aborting instead when the client left replies unread (a close() would wait
for it).  Replies are batched so that pipelined commands get their replies
in one segment (RFC 2920); STARTTLS swaps in the TLS writer (`writer`).

`linger(stream)` is for a final 421 to a client that may still be sending
(a trickled line or DATA): closing a socket with input unread makes the
kernel answer with a reset, which can destroy the 421 before the client
reads it.  So the connection is half-closed after the 421 and the client's
input swallowed until it closes too, for `LINGER_SECONDS` at most (TLS has
no half-close: there the 421 goes as it can).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

LINGER_SECONDS = 2.0  # a slow client's input swallowed after its final 421, at most


class Writer(Protocol):
    """Where replies go (asyncio.StreamWriter fits)."""

    def write(self, data: bytes) -> None:
        """Queue bytes for sending."""

    async def drain(self) -> None:
        """Wait until the queued bytes may be sent."""

    def close(self) -> None:
        """Close the connection."""


class Outbox:
    """Reply octets waiting to be sent on one connection."""

    def __init__(self, writer: Writer, drain_timeout: float | None):
        self.writer = writer
        self._drain_timeout = drain_timeout
        self._pending: list[bytes] = []

    def add(self, data: bytes) -> None:
        """Queue octets for the next flush."""
        self._pending.append(data)

    @property
    def size(self) -> int:
        """Octets queued but not yet written."""
        return sum(map(len, self._pending))

    async def flush(self) -> None:
        """Send the queued replies; a client that does not read times out."""
        if not self._pending:
            return
        self.writer.write(b"".join(self._pending))
        self._pending.clear()
        if self._sent():
            return  # the kernel took it all: nothing to wait for, no timer to arm
        async with asyncio.timeout(self._drain_timeout):
            await self.writer.drain()

    def _sent(self) -> bool:
        """True when the transport holds nothing unsent and is open (drain would not wait)."""
        transport = getattr(self.writer, "transport", None)
        return (transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0)

    def last_words(self, final: bytes) -> None:
        """Write the queued replies and `final` without waiting for the client."""
        self._pending.append(final)
        try:
            self.writer.write(b"".join(self._pending))
        except (OSError, RuntimeError):
            pass
        self._pending.clear()

    async def linger(self, stream: Any) -> None:
        """Half-close after the last words; read and drop input until EOF or LINGER_SECONDS."""
        transport = getattr(self.writer, "transport", None)
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            return
        with contextlib.suppress(OSError, TimeoutError):
            transport.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                while await stream.read(65536):
                    pass

    def hang_up(self) -> None:
        """Close the writer; abort it if the client left replies unread."""
        transport = getattr(self.writer, "transport", None)
        if transport is not None and transport.get_write_buffer_size() > 0:
            transport.abort()  # a close() would wait for a client that does not read
        self.writer.close()
