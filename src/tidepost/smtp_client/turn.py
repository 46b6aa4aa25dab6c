"""The client side of the relay verbs: ETRN (RFC 1985) and ODMR (RFC 2645).

`etrn(peer, helo_name, domains, config)` connects (STARTTLS when offered),
sends one `ETRN domain` per domain and returns each reply; `tidepost etrn`
and the routes' `etrn` key use it.  `UpstreamRequests` sends those requests
in the background after a route is released and logs every reply; it owns
its tasks and `close()` cancels them.

`odmr(peer, helo_name, user, password, domains, config, serve)` is the
site's half of On-Demand Mail Relay: EHLO, AUTH PLAIN, `ATRN domain,...`;
on 250 the roles reverse and `serve(reader, writer)` (an SMTP server
conversation, injected by the caller) runs on the same connection.
Failures of the connection raise `TempFailure`; refusals come back as
replies.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tidepost.config.schema import DeliveryConfig
from tidepost.errors import TempFailure
from tidepost.smtp_client.replies import Reply
from tidepost.smtp_client.session import OnSession, Peer, SmtpSession, open_session
from tidepost.usage.meter import LinkMeter

log = logging.getLogger("tidepost.smtp_client.turn")

ETRN_PORT = 25
ODMR_PORT = 366

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def parse_upstream(text: str, default_port: int) -> Peer:
    """`host`, `host:port` or `[v6]:port` as a Peer (the name is resolved on connect)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or (":" in host and not host.startswith("[")):
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST[:PORT]")
    return Peer(host, host, int(port))


async def etrn(peer: Peer, helo_name: str, domains: Sequence[str],
               config: DeliveryConfig, *, on_open: OnSession | None = None,
               on_close: OnSession | None = None) -> list[tuple[str, Reply]]:
    """Ask `peer` to start its queue for each domain; (domain, reply) pairs."""
    session = await open_session(peer, helo_name, config, on_open=on_open, on_close=on_close)
    try:
        return [(domain, await session.command(f"ETRN {domain}")) for domain in domains]
    finally:
        await session.quit()


async def odmr(peer: Peer, helo_name: str, user: str, password: str,
               domains: Sequence[str], config: DeliveryConfig, serve: Serve) -> Reply:
    """AUTH, ATRN, then serve SMTP on the same connection; the reply to ATRN or AUTH."""
    session = await open_session(peer, helo_name, config)
    try:
        reply = await _authenticate(session, user, password)
        if reply.code != 235:
            return reply
        # We serve the reversed session ourselves (no proxy in between): say so, so
        # a tidepost relay may send XTIDEPOST BATCH on it (docs/BATCH.md); others 5xx.
        await session.command("XTIDEPOST BATCH")
        reply = await session.command("ATRN " + ",".join(domains) if domains else "ATRN")
        if reply.code == 250:
            await serve(session.reader, session.writer)
            session.close()  # the provider said QUIT to our server side
        return reply
    finally:
        if not session.broken:
            await session.quit()


async def _authenticate(session: SmtpSession, user: str, password: str) -> Reply:
    """AUTH PLAIN with an initial response (RFC 4954, RFC 4616)."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
    return await session.command(f"AUTH PLAIN {token}")


@dataclass(frozen=True, slots=True)
class UpstreamPlan:
    """Whom a route asks, and for which domains, after it is released."""

    upstreams: tuple[str, ...]
    domains: tuple[str, ...]


class UpstreamRequests:
    """Background ETRN requests after releases; every task is owned here.

    `pending(route)` counts the requests of a route not answered yet (the
    hang-up signal waits for them); each request's connection is counted in
    the link meter under the route, when one is given.
    """

    def __init__(self, helo_name: str, config: DeliveryConfig,
                 meter: LinkMeter | None = None):
        self._helo_name = helo_name
        self._config = config
        self._meter = meter
        self._tasks: dict[asyncio.Task[None], str] = {}  # task -> route

    def ask(self, route: str, plan: UpstreamPlan) -> None:
        """Start asking each upstream of `route` (fire and forget, logged)."""
        for upstream in plan.upstreams:
            task = asyncio.get_running_loop().create_task(
                self._ask_one(route, upstream, plan.domains))
            self._tasks[task] = route
            task.add_done_callback(self._forget)

    def pending(self, route: str) -> int:
        """Requests for `route` still waiting for their answers."""
        return sum(1 for owner in self._tasks.values() if owner == route)

    def _forget(self, task: asyncio.Task[None]) -> None:
        """A request ended."""
        self._tasks.pop(task, None)

    async def wait_idle(self) -> None:
        """Wait for the requests in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the requests in progress."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _ask_one(self, route: str, upstream: str, domains: Sequence[str]) -> None:
        """One upstream: ETRN every domain, log the replies; never raises."""
        meter = self._meter
        opened = (lambda session: meter.opened(route)) if meter else None
        closed = (lambda session: _count_closed(meter, route, session)) if meter else None
        try:
            peer = parse_upstream(upstream, ETRN_PORT)
            for domain, reply in await etrn(peer, self._helo_name, domains, self._config,
                                            on_open=opened, on_close=closed):
                level = logging.INFO if reply.code // 100 == 2 else logging.WARNING
                log.log(level, "route %s: ETRN %s to %s: %s", route, domain, upstream, reply)
        except (TempFailure, ValueError) as exc:
            log.warning("route %s: ETRN to %s failed: %s", route, upstream, exc)
        except Exception:  # a background task must not die silently
            log.exception("route %s: ETRN to %s failed", route, upstream)


def _count_closed(meter: LinkMeter, route: str, session: SmtpSession) -> None:
    """An ETRN connection ends: its bytes and its end go to the link meter."""
    meter.traffic(route, session.traffic())
    meter.closed(route)
