"""XTIDEPOST BATCH between a real BatchSender and a real SMTP server on a real queue.

Outcomes per recipient as SMTP gives them, exactly-once receipt of a
repeated transfer, the same checks as SMTP (relay control, size, bare LF),
and resume after the connection is cut in the middle of a 2 MB message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3

from tidepost.address import Address
from tidepost.clock import SystemClock
from tidepost.config.load import parse_config
from tidepost.config.schema import DeliveryConfig
from tidepost.model import QueuedRecipient
from tidepost.outcomes import Verdict
from tidepost.queue.sqlite import SqliteQueue
from tidepost.routing.routes import Router
from tidepost.smtp_client.batch import BatchSender, offers_batch
from tidepost.smtp_client.session import Peer, open_session
from tidepost.smtp_client.transaction import Transaction
from tidepost.smtp_server.batch_partials import FOLDER
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.submission.aliases import Aliases
from tidepost.submission.submit import Submission
from tidepost.submission.transfers import TransferKeys

CHUNK = 32 * 1024


def receiver_config(tmp_path):
    return parse_config(f'''
hostname = "relay.test"
spool = "{tmp_path}"
[smtp]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
max_message_size = 3000000
[local]
domains = ["relay.test"]
system_users = false
users = ["alice", "bob"]
''', "test")


def recipients(*addresses: str, first_id: int = 1) -> list[QueuedRecipient]:
    return [QueuedRecipient(first_id + i, 1, Address(*a.split("@")))
            for i, a in enumerate(addresses)]


def message(number: int, size: int = 2000) -> bytes:
    text = f"Subject: note {number}\r\n\r\n".encode()
    return text + b"A line of an ordinary message body.\r\n" * (size // 37)


class Receiver:
    """A running SMTP server (batch on) on an SQLite queue in tmp_path."""

    def __init__(self, tmp_path):
        self.config = receiver_config(tmp_path)
        self.queue = SqliteQueue(tmp_path / "queue.sqlite")
        self.submission = Submission(self.config, self.queue, SystemClock(),
                                     Router(self.config), Aliases(self.config),
                                     transfers=TransferKeys.load(tmp_path))
        self.server = SmtpServer(self.config, self.submission)
        self.path = tmp_path

    async def __aenter__(self):
        await self.server.start()
        self.port = self.server.addresses()[0][1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()
        await self.queue.close()

    def messages(self) -> int:
        with sqlite3.connect(self.path / "queue.sqlite") as db:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]

    async def sender(self, port: int = 0, **kwargs) -> BatchSender:
        smtp = await open_session(Peer("relay.test", "127.0.0.1", port or self.port),
                                  "site.test", DeliveryConfig(command_timeout=1.0))
        assert offers_batch(smtp)
        return BatchSender(smtp, CHUNK, 4, **kwargs)


def run(scenario, tmp_path):
    async def main():
        async with Receiver(tmp_path) as receiver:
            return await asyncio.wait_for(scenario(receiver), 60)
    return asyncio.run(main())


def test_outcomes_per_recipient_and_exactly_once(tmp_path):
    async def scenario(receiver: Receiver):
        sender = await receiver.sender()
        txs = [Transaction(Address("s", "site.test"),
                           recipients("alice@relay.test", "nobody@relay.test",
                                      "bob@relay.test", first_id=10 * i), message(i))
               for i in range(1, 31)]
        bad = Transaction(Address("s", "site.test"), recipients("alice@relay.test"),
                          b"Subject: x\r\n\r\nbare\nLF\r\n")
        results = await asyncio.gather(*(sender.send(tx, f"t{i}") for i, tx in
                                          enumerate(txs + [bad])))
        queued_once = receiver.messages()
        again = await asyncio.gather(*(sender.send(tx, f"t{i}") for i, tx in enumerate(txs)))
        await sender.close()
        await sender.session.quit()
        return results, again, queued_once, receiver.messages(), sender.encoder
    results, again, once, twice, encoder = run(scenario, tmp_path)
    for result in results[:-1]:
        assert [o.verdict for o in result.outcomes] == [Verdict.DELIVERED, Verdict.BOUNCED,
                                                        Verdict.DELIVERED]
        assert result.outcomes[1].status == "5.1.1"           # no such user, as over SMTP
    assert [o.verdict for o in results[-1].outcomes] == [Verdict.BOUNCED]
    assert results[-1].outcomes[0].status == "5.6.0"      # bare LF, as over SMTP
    assert all(o.verdict is Verdict.DELIVERED for o in again[0].outcomes[::2])
    assert "queued as" in again[0].outcomes[0].reason
    assert once == twice == 30                            # the repeat stored nothing
    assert encoder.compressed < encoder.raw / 5


def test_a_message_over_the_size_limit_is_refused(tmp_path):
    async def scenario(receiver: Receiver):
        sender = await receiver.sender()
        big = Transaction(Address("s", "site.test"), recipients("alice@relay.test"),
                          b"x" * 998 + b"\r\n" * 1 + b"y\r\n" * 1_100_000)
        result = await sender.send(big, "big")
        await sender.close()
        return result
    result = run(scenario, tmp_path)
    assert result.outcomes[0].verdict is Verdict.BOUNCED
    assert result.outcomes[0].status == "5.3.4"


class CutLink:
    """A TCP relay to the receiver that carries `limit` octets up, then nothing either way.

    What a dropped radio link looks like to both ends: no FIN, no reset;
    what arrived before the cut is there, the rest never comes.
    """

    def __init__(self, port: int, limit: int):
        self.port, self.limit, self.carried = port, limit, 0
        self.sockets: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for writer in self.sockets:
            writer.transport.abort()

    async def _relay(self, client_r, client_w):
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        self.sockets += [client_w, server_w]

        async def up():
            while data := await client_r.read(65536):
                room = self.limit - self.carried
                server_w.write(data[:max(room, 0)])
                self.carried += len(data)

        async def down():
            while data := await server_r.read(65536):
                if self.carried < self.limit:
                    client_w.write(data)
        await asyncio.gather(up(), down(), return_exceptions=True)


def test_resume_after_a_cut_sends_at_most_one_chunk_again(tmp_path):
    body = b"Subject: photos\r\n\r\n" + b"".join(
        os.urandom(57).hex().encode()[:76] + b"\r\n" for _ in range(2_000_000 // 78))
    tx = Transaction(Address("s", "site.test"), recipients("alice@relay.test"), body)
    second_before = 0

    async def scenario(receiver: Receiver):
        async with CutLink(receiver.port, 700_000) as link:
            first = await receiver.sender(port=link.listen_port)
            cut = await first.send(tx, "photo1")
            await first.close()
        [partial] = (receiver.path / FOLDER).glob("*-photo1")  # the client's own name
        held = partial.stat().st_size
        second = await receiver.sender()
        nonlocal second_before
        second_before = second.session.written
        retry = Transaction(tx.sender, [dataclasses.replace(r, attempts=1)
                                        for r in tx.recipients], tx.body)
        done = await second.send(retry, "photo1")
        await second.close()
        await second.session.quit()
        whole = await receiver.sender()  # the reference: the same message, never cut
        whole_before = whole.session.written
        await whole.send(tx, "photo2")
        await whole.close()
        return (cut, held, done, second, receiver.messages() - 1,
                whole.session.written - whole_before)
    cut, held, done, second, messages, uninterrupted = run(scenario, tmp_path)
    assert cut.outcomes[0].verdict is Verdict.DEFERRED
    assert done.outcomes[0].verdict is Verdict.DELIVERED and messages == 1
    assert second.octets_resumed == held > 0
    # Sent again: both sessions' octets less one uninterrupted transfer's.
    sent_again = 700_000 + second.session.written - second_before - uninterrupted
    assert sent_again <= CHUNK
    assert not list((tmp_path / FOLDER).glob("*photo1"))


def test_two_jobs_of_one_message_share_its_transfer_id(tmp_path):
    async def scenario(receiver: Receiver):
        sender = await receiver.sender()
        body = message(1)
        jobs = [Transaction(Address("s", "site.test"), recipients(rcpt, first_id=n), body)
                for n, rcpt in ((1, "alice@relay.test"), (2, "bob@relay.test"))]
        results = await asyncio.wait_for(asyncio.gather(
            *(sender.send(tx, "Q1.1700000000000") for tx in jobs)), 10)
        await sender.close()
        return results
    results = run(scenario, tmp_path)
    assert [r.outcomes[0].verdict for r in results] == [Verdict.DELIVERED] * 2
