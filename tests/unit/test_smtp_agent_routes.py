"""The SMTP agent on routes: hold guard, link ledger, dial delay, parallel lookups
after a release.  A tiny SMTP sink on 127.0.0.1 and an in-memory DNS stand in
for the world."""

import asyncio
import socket
import time
from pathlib import Path

from tidepost.address import Address, parse_mailbox
from tidepost.clock import SystemClock
from tidepost.config.load import parse_config
from tidepost.config.schema import DeliveryConfig, RouteConfig
from tidepost.delivery.maildir import MaildirAgent
from tidepost.delivery.smtp import SmtpAgent
from tidepost.manager.manager import Manager
from tidepost.model import DeliveryJob, Envelope, MessageInfo, QueuedRecipient
from tidepost.queue.sqlite import SqliteQueue
from tidepost.resolver.resolver import Answer, Lookups
from tidepost.routing.ledger import LEDGER_FILE, Ledger
from tidepost.routing.routes import Router
from tidepost.submission.aliases import Aliases
from tidepost.submission.submit import ClientInfo, Submission
from tidepost.testing.clock import FakeClock

BODY = b"Subject: t\r\n\r\nhello\r\n"
UPLINK = RouteConfig(name="uplink", on_demand=True, dial_delay=1.5)
LAN = RouteConfig(name="lan", on_demand=False, dial_delay=1.5)


class Sink:
    """Accepts every message; counts connections and messages."""

    def __init__(self, port: int = 0):
        self.port = port
        self.connections = 0
        self.messages: list[bytes] = []

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader, writer):
        self.connections += 1
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go\r\n")
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                self.messages.append(data)
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


class FakeDns(Lookups):
    """Every NAME.test has MX mx.NAME.test, which has A 127.0.0.1 and no AAAA.

    `delay` seconds per query; `peak` is the most queries in flight at once.
    """

    def __init__(self, delay: float = 0.0, guard=None, shared=None):
        self.delay = delay
        self.guard = guard
        self.state = shared if shared is not None else {"queries": [], "now": 0, "peak": 0}

    async def query(self, name, rdtype):
        if self.guard:
            self.guard(name, rdtype)
        state = self.state
        state["queries"].append((name, rdtype))
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            await asyncio.sleep(self.delay)
        finally:
            state["now"] -= 1
        if rdtype == "MX":
            return Answer(name, rdtype, (f"10 mx.{name}.",), 300)
        return Answer(name, rdtype, ("127.0.0.1",) if rdtype == "A" else (), 300)

    def guarded(self, guard):
        return FakeDns(self.delay, guard, self.state)


def job(domain="d.test", cause="released: tidepost link up") -> DeliveryJob:
    info = MessageInfo(1, "Q1", parse_mailbox("a@site.test"), 0.0, len(BODY))
    rcpt = QueuedRecipient(7, 1, parse_mailbox(f"b@{domain}"))
    return DeliveryJob(info, [rcpt], "uplink", domain, BODY, cause=cause)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent(port, tmp_path, held=False, clock=None, dns=None):
    ledger = Ledger(tmp_path / LEDGER_FILE, SystemClock())
    config = DeliveryConfig(smtp_port=port, connect_timeout=2.0, starttls="never")
    return SmtpAgent(config, dns or FakeDns(), "site.test", clock or FakeClock(),
                     is_held=lambda route: held, ledger=ledger), ledger


def test_held_route_sends_no_query_and_opens_no_connection(tmp_path):
    async def main():
        async with Sink() as sink:
            dns = FakeDns()
            smtp, ledger = agent(sink.port, tmp_path, held=True, dns=dns)
            session = smtp.session(UPLINK, "d.test")
            outcomes = await session.deliver(job())
            await session.close()
            return outcomes, session, sink.connections, dns.state["queries"], ledger
    outcomes, session, connections, queries, ledger = asyncio.run(main())
    assert [(o.verdict.value, o.status) for o in outcomes] == [("deferred", "4.4.0")]
    assert "route uplink is held" in outcomes[0].reason
    assert session.destination_failed is None  # no backoff for the destination
    assert connections == 0 and queries == [] and ledger.recent() == []


def test_released_route_notes_queries_and_connections_in_the_ledger(tmp_path):
    async def main():
        async with Sink() as sink:
            smtp, ledger = agent(sink.port, tmp_path)
            session = smtp.session(UPLINK, "d.test")
            outcomes = await session.deliver(job())
            await session.close()
            return outcomes, ledger, sink.port
    outcomes, ledger, port = asyncio.run(main())
    assert outcomes[0].verdict.value == "delivered"
    records = ledger.recent("uplink")
    assert sorted(r.what for r in records) == sorted([
        "dns d.test MX", "dns mx.d.test AAAA", "dns mx.d.test A",
        f"connect mx.d.test[127.0.0.1]:{port}"])
    assert {(r.queue_id, r.cause) for r in records} == {("Q1", "released: tidepost link up")}


def test_lan_route_is_neither_guarded_nor_noted(tmp_path):
    async def main():
        async with Sink() as sink:
            smtp, ledger = agent(sink.port, tmp_path, held=True)
            session = smtp.session(LAN, "d.test")
            outcomes = await session.deliver(job())
            await session.close()
            return outcomes, ledger
    outcomes, ledger = asyncio.run(main())
    assert outcomes[0].verdict.value == "delivered" and ledger.recent() == []


def test_dial_delay_lets_a_late_receiver_take_the_mail(tmp_path):
    """The receiver starts 0.7 s after the first connect; dial_delay is 1.5 s."""
    port = free_port()

    async def late_sink(sink):
        await asyncio.sleep(0.7)
        await sink.__aenter__()

    async def main():
        sink = Sink(port)
        starter = asyncio.create_task(late_sink(sink))
        smtp, ledger = agent(port, tmp_path, clock=SystemClock())
        session = smtp.session(UPLINK, "d.test")
        started = time.monotonic()
        outcomes = await session.deliver(job())
        elapsed = time.monotonic() - started
        await session.close()
        await starter
        await sink.__aexit__()
        return outcomes, elapsed, sink.messages, ledger
    outcomes, elapsed, messages, ledger = asyncio.run(main())
    assert outcomes[0].verdict.value == "delivered"
    assert len(messages) == 1 and 1.4 < elapsed < 5
    connects = [r for r in ledger.recent("uplink") if r.what.startswith("connect")]
    assert len(connects) == 2


def test_dial_delay_is_tried_once_then_the_destination_fails(tmp_path):
    async def main():
        smtp, ledger = agent(free_port(), tmp_path, clock=FakeClock())
        session = smtp.session(UPLINK, "d.test")
        outcomes = await session.deliver(job())
        return outcomes, session.destination_failed, ledger
    outcomes, failed, ledger = asyncio.run(main())
    assert outcomes[0].status == "4.4.1" and failed is not None
    assert len([r for r in ledger.recent() if r.what.startswith("connect")]) == 2


def test_refusing_lan_destination_is_not_delayed(tmp_path):
    async def main():
        smtp, _ = agent(free_port(), tmp_path, clock=SystemClock())
        session = smtp.session(LAN, "d.test")
        started = time.monotonic()
        outcomes = await session.deliver(job())
        return outcomes, time.monotonic() - started
    outcomes, elapsed = asyncio.run(main())
    assert outcomes[0].status == "4.4.1" and elapsed < 0.5


def test_release_resolves_twenty_destinations_in_parallel(tmp_path):
    """After a release every destination's worker resolves at once, not one by one."""
    config = parse_config(f'''
hostname = "site.test"
spool = "{tmp_path}"
[local]
domains = ["site.test"]
system_users = false
users = ["alice"]
[queue]
poll_interval = "0.1s"
[[route]]
name = "uplink"
start_held = true
''', "test")

    async def main():
        async with Sink() as sink:
            dns = FakeDns(delay=0.2)
            queue = SqliteQueue(tmp_path / "queue.sqlite")
            router = Router(config)
            smtp, ledger = agent(sink.port, tmp_path, dns=dns)
            agents = {"local": MaildirAgent(config.local.maildir, tmp_path, "site.test"),
                      "smtp": smtp}
            manager = Manager(config, queue, router, agents, SystemClock(), "test:1:1")
            smtp.is_held = manager.is_held
            submission = Submission(config, queue, SystemClock(), router, Aliases(config),
                                    on_queued=manager.queued)
            stopping = asyncio.Event()
            runner = asyncio.create_task(manager.run(stopping))
            for i in range(20):
                await submission.submit(
                    Envelope(Address("alice", "site.test"), (Address("b", f"d{i}.test"),)),
                    BODY, ClientInfo("127.0.0.1", "lan"))
            await asyncio.sleep(0.3)
            queries_while_held = list(dns.state["queries"])
            started = time.monotonic()
            await manager.release("uplink", "test")
            while len(sink.messages) < 20 and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - started
            stopping.set()
            await runner
            await queue.close()
            return queries_while_held, dns.state["peak"], len(sink.messages), elapsed, ledger
    held_queries, peak, delivered, elapsed, ledger = asyncio.run(main())
    assert held_queries == []
    assert delivered == 20
    assert peak >= 20          # 20 MX lookups in flight together
    assert elapsed < 2.0       # serial lookups would take 20 * 3 * 0.2 s
    assert {r.cause for r in ledger.recent("uplink", 1000)} == {"released: test"}
