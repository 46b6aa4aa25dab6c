"""The SMTP listeners: accept TCP connections, run a Conversation on each.

`SmtpServer(config, submission, tls_context=None, conversation=Conversation)`
(`conversation` makes each session: a subclass adds verbs); `await server.start()`
binds every `smtp.listen` entry ("HOST:PORT", "[::1]:PORT", "*:PORT" for all
addresses; port 0 picks a free port, see `addresses()`).  `server.close()`
stops listening and cancels the conversations (each says 421 4.3.2 if it
can; a message whose submission was cancelled is not acknowledged), and
`await server.wait_closed()` waits for them to end.  `statistics()` returns a
`ServerStatistics` snapshot.

Memory (bodies.py): DATA sections past 1 MiB need one of the server's
`large_bodies` slots (about 256 MiB of large bodies at once); the others
wait, unread.  Limits (admission.py): `smtp.max_connections` in all, of which
`smtp.reserved_connections` only for relay networks and recently
authenticated addresses; untrusted addresses also have a per-address count
and connection rate.  A connection over a limit is answered `421 4.7.0` at
once, logged (`reject`, command=CONNECT) and closed, without waiting for
the client to read (the 421 goes into the kernel's buffer, or the
connection is reset): accepting never waits on a client, so a flood of slow
clients cannot stall it.  No DNS: clients are
known by IP address only, and the greeting names `config.hostname`.  Every
conversation task is owned by the server.
Config keys read: smtp.listen (the limits through Admission, the rest
through Conversation).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import asdict, dataclass
from typing import Callable

from tidepost.config.schema import Config
from tidepost.eventloop import current_task
from tidepost.smtp_server import binding, bodies
from tidepost.smtp_server import replies as S
from tidepost.smtp_server import tls
from tidepost.smtp_server.access import AccessPolicy
from tidepost.smtp_server.admission import Admission, Slot
from tidepost.smtp_server.bodies import LargeBodies
from tidepost.smtp_server.rejections import log_reject
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.session import Conversation
from tidepost.smtp_server.state import Counters
from tidepost.submission.submit import Submission

log = logging.getLogger("tidepost.smtp_server")


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of one SmtpServer's counters."""

    connections_active: int
    connections_reserved: int      # of the active ones, in the reserve
    connections_total: int
    connections_refused: int
    sessions: int
    commands: int
    errors: int
    timeouts: int
    error_disconnects: int
    recipients_accepted: int
    recipients_rejected: int
    messages_accepted: int
    messages_rejected: int


class SmtpServer:
    """Listens on the configured addresses and serves SMTP on each connection."""

    def __init__(self, config: Config, submission: Submission,
                 tls_context: ssl.SSLContext | None = None,
                 conversation: Callable[..., Conversation] = Conversation,
                 large_bodies: LargeBodies | None = None):
        self._config = config
        self._conversation = conversation  # a subclass adds verbs (turn.py: ETRN, ATRN)
        self._submission = submission
        self._tls_context = tls_context
        self._access = AccessPolicy(config, submission)
        self._admission = Admission(config.smtp, self._access.in_relay_networks)
        self.large_bodies = large_bodies or bodies.for_config(config.smtp)
        self._client_of: dict[asyncio.Task[None], str] = {}  # connected clients by task
        self._counters = Counters()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._total = 0
        self._refused = 0
        self._closing = False

    async def start(self, bound: dict[str, list[socket.socket]] | None = None) -> None:
        """Start accepting on every `smtp.listen` address (sockets from `bound` if given)."""
        bound = bound or {}
        for entry in self._config.smtp.listen:
            for sock in bound.get(entry) or binding.bind(entry):
                server = await asyncio.start_server(self._on_connection, sock=sock)
                self._servers.append(server)

    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs actually bound."""
        return [sock.getsockname()[:2] for server in self._servers
                for sock in server.sockets]

    def close(self) -> None:
        """Stop listening and cancel the conversations in progress."""
        self._closing = True
        for server in self._servers:
            server.close()
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listeners and every conversation have ended."""
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def clients(self) -> list[str]:
        """The IP addresses of the clients connected now."""
        return list(self._client_of.values())

    def statistics(self) -> ServerStatistics:
        """Current counters: connections, commands, errors, messages."""
        return ServerStatistics(len(self._tasks), self._admission.statistics().reserved,
                                self._total, self._refused, **asdict(self._counters))

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection, or refuse it over the limits."""
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else ""
        self._total += 1
        admitted = self._admission.admit(ip) if not self._closing else S.S421_SHUTTING_DOWN
        if isinstance(admitted, Reply):
            return self._refuse(writer, ip, admitted)
        slot: Slot = admitted

        def on_authenticated() -> None:
            nonlocal slot  # AUTH moves the connection into the reserve
            slot = self._admission.authenticated(slot)

        task = current_task()
        assert task is not None
        self._tasks.add(task)
        self._client_of[task] = ip
        try:
            await self._converse(reader, writer, ip, on_authenticated)
        except asyncio.CancelledError:
            # Our own close() cancelled it.  End normally: Python 3.11's
            # start_server callback logs a cancelled connection task as an error.
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)
            self._client_of.pop(task, None)
            self._admission.release(slot)

    def _refuse(self, writer: asyncio.StreamWriter, ip: str, reply: Reply) -> None:
        """Say the 421 and hang up, never waiting for the client to read it."""
        self._refused += 1
        log_reject("CONNECT", ip, "", reply)
        transport = writer.transport
        try:
            transport.write(bytes(reply))
        except (OSError, RuntimeError):
            pass
        if transport.get_write_buffer_size() > 0:
            transport.abort()  # the kernel would not take 60 octets: do not wait
        else:
            transport.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        ip: str, on_authenticated: Callable[[], None]) -> None:
        """Run one Conversation; errors end that connection only."""
        conversation = self._conversation(
            self._config, self._submission, reader, writer, peer_ip=ip,
            access=self._access, tls_context=self._tls_context,
            tls_upgrade=tls.upgrade, counters=self._counters,
            on_authenticated=on_authenticated, large_bodies=self.large_bodies)
        try:
            await conversation.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SMTP conversation with %s failed", ip)
