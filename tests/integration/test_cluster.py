"""Three `tidepost serve` nodes on one PostgreSQL database: one relay cluster.

Real parts: a private PostgreSQL server (tests/conftest.py), unbound for
the customer's MX, three tidepost processes sharing the database, and a
counting SMTP sink standing in for the customer's server.
- mail submitted to all three nodes is held for site.test; ETRN to one node
  delivers all of it, each recipient once, and `tidepost status`/`queue`
  from any node show the whole cluster;
- two nodes answering the same ETRN at the same moment deliver each
  recipient once;
- a node SIGKILLed while its deliveries wait for the sink's reply to DATA
  loses nothing and duplicates nothing: its leases come back to the others,
  and an ETRN to a surviving node delivers every recipient exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import smtplib
import threading
import time

import pytest

from conftest import free_port, wait_for

pytestmark = pytest.mark.integration

SITE_ZONE = ["site.test. 300 MX 10 mx.site.test.", "mx.site.test. 300 A 127.0.0.1"]


class CountingSink:
    """An SMTP server that counts each (message, recipient) it accepted with 250.

    While `stalling`, it never answers the end of DATA: the client waits and
    the transaction is not counted unless it is answered.  While `delaying`,
    it answers the end of DATA (250, counted) only once `delaying` is off.
    """

    def __init__(self, port: int):
        self.port = port
        self.accepted: collections.Counter = collections.Counter()
        self.waiting = 0  # transactions whose DATA was sent and not yet answered
        self.stalling = False
        self.delaying = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 mx.site.test ESMTP sink\r\n")
        recipients: list[str] = []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250 mx.site.test\r\n")
                elif verb == b"MAIL":
                    recipients = []
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                    writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    await writer.drain()
                    subject = await self._data(reader)
                    if self.stalling:
                        self.waiting += 1
                        await reader.read()  # until the client goes away: never answered
                        return
                    if self.delaying:
                        self.waiting += 1
                        while self.delaying:
                            await asyncio.sleep(0.05)
                    for rcpt in recipients:
                        self.accepted[(subject, rcpt)] += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _data(reader: asyncio.StreamReader) -> str:
        subject = ""
        while (line := await reader.readline()) not in (b".\r\n", b""):
            if line.lower().startswith(b"subject:"):
                subject = line.split(b":", 1)[1].strip().decode()
        return subject

    def total(self) -> int:
        return sum(self.accepted.values())

    def duplicates(self) -> dict:
        return {key: n for key, n in self.accepted.items() if n > 1}

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def sink():
    server = CountingSink(free_port("127.0.0.1"))
    yield server
    server.close()


@pytest.fixture
def cluster(pg_server, tidepost_node, unbound, sink, request):
    """Three relay nodes on one fresh database, holding mail for site.test."""
    database = "cluster_" + request.node.name[-40:].lower().replace("[", "_").replace("]", "")
    dsn = pg_server.create_database(database)
    return relay_nodes(tidepost_node, unbound(SITE_ZONE), sink, dsn, 3, "0.5s",
                       relay={"customer_domains": ["site.test"], "etrn_rate": 1000})


def relay_nodes(tidepost_node, dns, sink, dsn: str, count: int, poll_interval: str,
                **sections) -> list:
    """`count` relay nodes on the database `dsn`, delivering to `sink`, started."""
    nodes = [tidepost_node(
        dns=dns, smtp_port=sink.port, start=False, hostname="relay.test",
        local={"domains": ["relay.test"], "users": ["postmaster"], "system_users": False},
        queue={"backend": "postgresql", "dsn": dsn, "node": f"n{i}", "node_timeout": "3s",
               "poll_interval": poll_interval, "min_backoff": "1s", "max_backoff": "2s"},
        **sections)
        for i in range(count)]
    for node in nodes:
        node.start()
    return nodes


def message(n: int) -> str:
    return f"From: x@far.test\r\nSubject: m{n}\r\nMessage-ID: <m{n}@far.test>\r\n\r\nbody {n}\r\n"


def submit_to_all(nodes, count: int) -> set[tuple[str, str]]:
    """`count` messages for alice and bob at site.test, spread over the nodes."""
    for n in range(count):
        nodes[n % len(nodes)].send("x@far.test", ["alice@site.test", "bob@site.test"],
                                   message(n))
    return {(f"m{n}", r) for n in range(count) for r in ("alice@site.test", "bob@site.test")}


def held(node) -> int:
    done = node.cli("queue", "-c", str(node.config_path), "--count")
    return int(done.stdout.decode().split()[0])


def etrn(node, domain: str = "site.test") -> int:
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        return c.docmd("ETRN", domain)[0]


def test_etrn_to_one_node_delivers_what_every_node_accepted_once(cluster, sink):
    expected = submit_to_all(cluster, 12)
    for node in cluster:  # each node sees the whole cluster's queue
        assert held(node) == len(expected)
    time.sleep(1.5)
    assert sink.total() == 0  # held for the customer, on every node
    status = cluster[2].cli("status", "-c", str(cluster[2].config_path)).stdout.decode()
    assert all(f"n{i}" in status for i in range(3))
    assert etrn(cluster[0]) in (250, 253)
    wait_for(lambda: sink.total() >= len(expected), 30, what="every recipient delivered")
    time.sleep(1.0)
    assert set(sink.accepted) == expected and sink.duplicates() == {}
    cluster[1].wait_queue_empty()
    assert etrn(cluster[1]) in (250, 251, 253)  # nothing left: nothing more arrives
    time.sleep(1.0)
    assert sink.total() == len(expected)


def test_two_nodes_answering_the_same_etrn_at_once_deliver_each_recipient_once(cluster, sink):
    expected = submit_to_all(cluster, 30)
    replies: list[int] = []
    threads = [threading.Thread(target=lambda node=node: replies.append(etrn(node)))
               for node in cluster[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: sink.total() >= len(expected), 40, what="every recipient delivered")
    time.sleep(1.5)
    assert set(sink.accepted) == expected and sink.duplicates() == {}
    assert replies and all(code in (250, 251, 253) for code in replies)


def test_a_node_killed_mid_delivery_loses_nothing_and_duplicates_nothing(cluster, sink):
    expected = submit_to_all(cluster, 10)
    sink.stalling = True
    assert etrn(cluster[0]) in (250, 253)
    wait_for(lambda: sink.waiting > 0, 20, what="deliveries waiting for the reply to DATA")
    in_flight = cluster[1].cli("queue", "-c", str(cluster[1].config_path)).stdout.decode()
    assert "n0" in in_flight  # the listing names the node holding each recipient in flight
    cluster[0].kill()
    sink.stalling = False
    assert sink.total() == 0

    def delivered_after_etrn() -> bool:
        etrn(cluster[1])
        return sink.total() >= len(expected)
    wait_for(delivered_after_etrn, 40, interval=1.0, what="the dead node's mail delivered")
    time.sleep(1.5)
    assert set(sink.accepted) == expected and sink.duplicates() == {}
    cluster[2].wait_queue_empty()
