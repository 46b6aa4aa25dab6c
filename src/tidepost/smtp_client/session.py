"""One outbound SMTP conversation: connection state (RFC 5321, RFC 3207).

`SmtpSession` wraps a pair of asyncio streams that are already open, so that
the same class serves a connection we dialled (`open_session`) and, later,
one the SMTP server accepted and turned around for ODMR (RFC 2645).  It knows
the peer, the EHLO extensions, whether TLS is on, and whether the connection
is still usable; the mail transaction itself is in transaction.py.

Failure convention: every method that talks raises `TempFailure` when the
connection is no longer usable (closed, timed out, unreadable reply, or a
421 reply) and sets `broken`; ordinary replies are returned as `Reply`.
`open_session` turns a refused greeting or EHLO into `TempFailure` too, so
the caller simply tries its next host.

Transactions on the connection take turns in its `pipeline` (pipeline.py).
What the connection carried is counted twice over: the bytes this client
wrote and read (`written`, `read`: SMTP in the clear, TLS left out) and, on
Linux, the kernel's TCP counters (`wire()`: TLS and retransmissions
included, as the link carried them; usage/wire.py).

Config read ([delivery]): connect_timeout (TCP connect and greeting),
command_timeout (each later reply), data_done_timeout (the reply to a
message's content, RFC 5321 4.5.3.2.6), starttls ("opportunistic": STARTTLS when
offered, no certificate check, and plain text again if the handshake fails).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from tidepost.config.schema import DeliveryConfig
from tidepost.errors import ConnectFailed, TempFailure
from tidepost.smtp_client.pipeline import Pipeline
from tidepost.smtp_client.replies import (MAX_REPLY_LINES, SERVICE_NOT_AVAILABLE, Reply,
                                         read_reply)
from tidepost.submission import transfers
from tidepost.usage.wire import WireCounts, read_counts

QUIT_TIMEOUT = 10.0  # seconds; a server slow to say goodbye costs us nothing


@dataclass(frozen=True, slots=True)
class Peer:
    """The host we talk to: its name, the address dialled and the port."""

    host: str
    address: str
    port: int = 25

    def __str__(self) -> str:
        return f"{self.host}[{self.address}]:{self.port}"


# Called with the peer before each TCP connection; raises to refuse it.
OnConnect = Callable[[Peer], None]
# Called with a session once its TCP connection is open, and once when it closes.
OnSession = Callable[["SmtpSession"], None]


class SmtpSession:
    """Connection state of one SMTP client conversation over open streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: Peer, *, command_timeout: float = 300.0,
                 data_done_timeout: float = 600.0):
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.command_timeout = command_timeout
        self.data_done_timeout = data_done_timeout  # the reply to the content (RFC 5321 4.5.3.2.6)
        self.extensions: dict[str, str] = {}  # EHLO keyword (upper case) -> parameters
        self.tls = False
        self.broken = False       # the connection can carry no more commands
        self.needs_rset = False   # a transaction was left open (RSET before MAIL)
        self.transactions = 0     # completed transactions (a reply to ".")
        self.tls_failed = False   # STARTTLS was agreed but the handshake failed
        self.replies = 0          # replies read, 421 excepted
        self.pipeline = Pipeline()
        self.written = 0          # bytes we wrote (before TLS)
        self.read = 0             # bytes of replies we read (before TLS)
        self._counted = WireCounts()  # what `traffic()` reported so far
        self.on_close: OnSession | None = None  # called once, just before the close

    def supports(self, keyword: str) -> bool:
        """True when the server announced `keyword` in its EHLO reply."""
        return keyword.upper() in self.extensions

    def tidepost_features(self) -> tuple[str, ...]:
        """The feature words of the server's XTIDEPOST keyword (upper case; none if absent)."""
        return tuple(self.extensions.get(transfers.EXTENSION, "").upper().split())

    def wire(self) -> WireCounts:
        """What the connection carried so far: the kernel's counts, else our own."""
        counts = read_counts(self.writer.get_extra_info("socket"))
        if counts is None:
            return WireCounts(self.written, self.read)
        return counts

    def traffic(self) -> WireCounts:
        """What the connection carried since the last call (for accounting)."""
        now = self.wire()
        new, self._counted = now - self._counted, now
        return new

    @property
    def size_limit(self) -> int:
        """The SIZE the server announced, in bytes; 0 when it set none."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() else 0

    async def read_reply(self, timeout: float | None = None,
                         max_lines: int = MAX_REPLY_LINES) -> Reply:
        """Read one reply; a 421 or any I/O failure raises TempFailure."""
        try:
            reply = await read_reply(self.reader, timeout or self.command_timeout, max_lines)
        except TempFailure as failure:
            self.broken = True
            raise TempFailure(failure.status, f"{failure.reason} with {self.peer}",
                              self.peer.host) from None
        if reply.code == SERVICE_NOT_AVAILABLE:
            self.broken = True
            raise TempFailure(_temporary(reply.status), f"host {self.peer} said: {reply}",
                              self.peer.host, str(reply))
        self.replies += 1
        self.read += sum(len(line) + 6 for line in reply.lines)  # "250-" ... CRLF
        return reply

    async def write(self, data: bytes) -> None:
        """Send raw bytes and wait until the transport has taken them."""
        try:
            self.writer.write(data)
            self.written += len(data)
            async with asyncio.timeout(self.command_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.broken = True
            raise TempFailure("4.4.2", f"timed out sending to {self.peer}",
                              self.peer.host) from None
        except OSError as error:
            self.broken = True
            raise TempFailure("4.4.2", f"lost connection with {self.peer}: "
                              f"{_strerror(error)}", self.peer.host) from None

    async def command(self, line: str) -> Reply:
        """Send one command line and read its reply."""
        await self.write(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def handshake(self, helo_name: str, greeting_timeout: float) -> None:
        """Read the greeting and say EHLO (HELO if EHLO is refused)."""
        greeting = await self.read_reply(greeting_timeout)
        if greeting.code // 100 != 2:
            await self.quit()
            raise self.refusal(greeting, "refused to talk to me")
        await self.ehlo(helo_name)

    async def ehlo(self, helo_name: str) -> None:
        """Send EHLO and record the extensions; fall back to HELO on 5xx."""
        reply = await self.command(f"EHLO {helo_name}")
        extensions = _parse_extensions(reply.lines[1:])
        if reply.code // 100 == 5:
            extensions = {}
            reply = await self.command(f"HELO {helo_name}")
        if reply.code // 100 != 2:
            await self.quit()
            raise self.refusal(reply, "refused our EHLO/HELO")
        self.extensions = extensions

    async def starttls(self, helo_name: str, context: ssl.SSLContext) -> bool:
        """Switch to TLS if the server agrees, then EHLO again; False if it did not.

        A failed handshake raises TempFailure (the connection is unusable
        afterwards, so the caller reconnects without TLS).
        """
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return False
        try:
            await self.writer.start_tls(context, server_hostname=_sni_name(self.peer.host),
                                        ssl_handshake_timeout=self.command_timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as error:
            self.broken = self.tls_failed = True
            raise TempFailure("4.7.5", f"TLS handshake with {self.peer} failed: "
                              f"{_strerror(error)}", self.peer.host) from None
        self.tls = True
        self.extensions = {}
        await self.ehlo(helo_name)
        return True

    async def reset(self) -> None:
        """Send RSET if a transaction was left open; a refusal breaks the session."""
        if not self.needs_rset:
            return
        reply = await self.command("RSET")
        if reply.code // 100 != 2:
            self.broken = True
            raise self.refusal(reply, "refused RSET")
        self.needs_rset = False

    async def quit(self) -> None:
        """Say QUIT (unless broken) and close the connection; never raises."""
        if not self.broken:
            try:
                await self.write(b"QUIT\r\n")
                await self.read_reply(min(self.command_timeout, QUIT_TIMEOUT))
            except TempFailure:
                pass
        self.close()

    def close(self) -> None:
        """Close the connection without a word."""
        self.broken = True
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self)
        try:
            self.writer.close()
        except Exception:  # closing a dead transport must not mask the real error
            pass

    def refusal(self, reply: Reply, what: str) -> TempFailure:
        """A TempFailure for a session-level refusal, made temporary (next host)."""
        return TempFailure(_temporary(reply.status), f"host {self.peer} {what}: {reply}",
                           self.peer.host)


async def open_session(peer: Peer, helo_name: str, config: DeliveryConfig,
                       *, tls: bool = True, on_connect: OnConnect | None = None,
                       on_open: OnSession | None = None, on_close: OnSession | None = None
                       ) -> SmtpSession:
    """Connect to `peer`, read the greeting, EHLO, and STARTTLS when offered.

    If the TLS handshake fails, the host is dialled once more and the
    conversation continues in plain text (opportunistic TLS, RFC 3207 says a
    client may do so).  `on_connect(peer)` runs before every TCP connection,
    `on_open(session)` once it is open and `on_close(session)` when it
    closes (the link meter counts each connection's bytes there).
    """
    session = await connect(peer, config, on_connect)
    if on_open is not None:
        on_open(session)
    session.on_close = on_close
    try:
        await session.handshake(helo_name, config.connect_timeout)
        if tls and config.starttls == "opportunistic" and session.supports("STARTTLS"):
            await session.starttls(helo_name, insecure_tls_context())
        return session
    except TempFailure:
        session.close()
        if not session.tls_failed:
            raise
    return await open_session(peer, helo_name, config, tls=False, on_connect=on_connect,
                              on_open=on_open, on_close=on_close)


async def connect(peer: Peer, config: DeliveryConfig,
                  on_connect: OnConnect | None = None) -> SmtpSession:
    """Open a TCP connection to `peer` within connect_timeout (no greeting read).

    `on_connect(peer)`, when given, runs first and may raise to refuse (a
    held route); it is also where the link ledger notes the connection.
    """
    if on_connect is not None:
        on_connect(peer)
    try:
        async with asyncio.timeout(config.connect_timeout):
            reader, writer = await asyncio.open_connection(peer.address, peer.port)
    except TimeoutError:
        raise ConnectFailed(f"connect to {peer}: timed out") from None
    except OSError as error:
        raise ConnectFailed(f"connect to {peer}: {_strerror(error)}") from None
    return SmtpSession(reader, writer, peer, command_timeout=config.command_timeout,
                       data_done_timeout=config.data_done_timeout)


def insecure_tls_context() -> ssl.SSLContext:
    """A client TLS context that encrypts without checking the certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _parse_extensions(lines: tuple[str, ...]) -> dict[str, str]:
    """EHLO reply lines after the first, as {KEYWORD: parameters}."""
    extensions = {}
    for line in lines:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


def _temporary(status: str) -> str:
    """The same enhanced status in class 4 (a refusal by one host defers)."""
    return "4" + status[1:]


def _sni_name(host: str) -> str | None:
    """The name to send in TLS SNI: none for an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def _strerror(error: BaseException) -> str:
    """A short reason for an OSError: "Connection refused" rather than errno noise."""
    errno = getattr(error, "errno", None)
    if isinstance(error, ssl.SSLError):
        return getattr(error, "reason", None) or str(error)
    if errno:
        return os.strerror(errno)
    return str(error) or type(error).__name__
