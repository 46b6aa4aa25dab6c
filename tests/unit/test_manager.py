"""The queue manager end to end in one process: real SQLite queue and Maildirs,
a scripted SMTP agent standing in for the network."""

import asyncio
import socket
from pathlib import Path

from tidepost.address import Address
from tidepost.clock import SystemClock
from tidepost.config.load import parse_config
from tidepost.delivery.maildir import MaildirAgent
from tidepost.errors import QueueError
from tidepost.manager import manager as manager_module
from tidepost.manager.manager import Manager
from tidepost.model import Envelope
from tidepost.outcomes import bounced, deferred, delivered
from tidepost.queue.sqlite import SqliteQueue
from tidepost.routing.routes import Router
from tidepost.submission.aliases import Aliases
from tidepost.submission.submit import ClientInfo, Submission

ALICE = Address("alice", "site.test")
BODY = b"Subject: test\r\nFrom: alice@site.test\r\n\r\nhello\r\n"


class ScriptedAgent:
    """An SMTP agent whose answers come from a function of (recipient, attempt)."""

    def __init__(self, answer=None, failing_destination=False):
        self.answer = answer or (lambda rcpt, attempt: "delivered")
        self.failing_destination = failing_destination
        self.deliveries: list[str] = []
        self.attempts: dict[str, int] = {}

    def session(self, route, nexthop):
        return ScriptedSession(self)


class ScriptedSession:
    def __init__(self, agent):
        self.agent = agent
        self.destination_failed = None
        self.depth = 0

    async def deliver(self, job, overlap=None):
        outcomes = []
        for rcpt in job.recipients:
            key = str(rcpt.address)
            self.agent.attempts[key] = self.agent.attempts.get(key, 0) + 1
            if self.agent.failing_destination:
                self.destination_failed = ("4.4.1", "connection refused")
            verdict = self.agent.answer(key, self.agent.attempts[key])
            if verdict == "delivered":
                self.agent.deliveries.append(key)
                outcomes.append(delivered(rcpt.recipient_id, "250 ok", "mx.test"))
            elif verdict == "deferred":
                outcomes.append(deferred(rcpt.recipient_id, "4.2.0", "450 busy", "mx.test"))
            else:
                outcomes.append(bounced(rcpt.recipient_id, "5.1.1", "550 no such user", "mx.test"))
        return outcomes

    async def close(self):
        pass


def make_config(spool: Path, held: bool = False, concurrency: int = 10, route_extra: str = "",
                queue_extra: str = ""):
    return parse_config(f'''
hostname = "site.test"
spool = "{spool}"
[local]
domains = ["site.test"]
users = ["alice", "bob"]
system_users = false
[queue]
min_backoff = "1s"
max_backoff = "1s"
poll_interval = "0.1s"
{queue_extra}
[delivery]
destination_concurrency = {concurrency}
[[route]]
name = "uplink"
start_held = {"true" if held else "false"}
{route_extra}
''', "test")


class Harness:
    def __init__(self, spool: Path, agent: ScriptedAgent, held: bool = False, owner="test:1:1",
                 concurrency: int = 10, route_extra: str = "", queue_extra: str = ""):
        self.config = make_config(spool, held, concurrency, route_extra, queue_extra)
        self.queue = SqliteQueue(spool / "queue.sqlite")
        router = Router(self.config)
        agents = {"local": MaildirAgent(self.config.local.maildir, spool, "site.test"),
                  "smtp": agent}
        self.manager = Manager(self.config, self.queue, router, agents, SystemClock(), owner)
        self.submission = Submission(self.config, self.queue, SystemClock(), router,
                                     Aliases(self.config), on_queued=self.manager.queued)
        self.spool = spool

    async def send(self, *rcpts: str, sender=ALICE):
        envelope = Envelope(sender, tuple(Address(*r.split("@")) for r in rcpts))
        return await self.submission.submit(envelope, BODY, ClientInfo("127.0.0.1", "client"))

    def maildir(self, user: str) -> list[bytes]:
        folder = self.spool / "mail" / user / "new"
        return [p.read_bytes() for p in folder.iterdir()] if folder.exists() else []


async def wait_until(condition, timeout: float = 5.0) -> bool:
    """Poll `condition` every 50 ms; whether it came true in time."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def run_until(harness: Harness, condition, timeout: float = 10.0):
    stopping = asyncio.Event()
    task = asyncio.create_task(harness.manager.run(stopping))
    try:
        return await wait_until(condition, timeout)
    finally:
        stopping.set()
        await task


def test_mail_that_was_delivered_to_the_mailbox_before_is_a_loop_and_bounces(tmp_path):
    # Another host (a Postfix forwarding with its own Delivered-To) sent it back.
    async def scenario():
        h = Harness(tmp_path, ScriptedAgent())
        envelope = Envelope(ALICE, (Address("bob", "site.test"), Address("alice", "site.test")))
        looped = b"Delivered-To: BOB@site.test\r\nSubject: again\r\n\r\nhello\r\n"
        await h.submission.submit(envelope, looped, ClientInfo("127.0.0.1", "client"))
        assert await run_until(h, lambda: len(h.maildir("alice")) >= 2)  # hers and the bounce
        assert h.maildir("bob") == []
        bounce = [m for m in h.maildir("alice") if b"Status: 5.4.6" in m]
        assert bounce and b"mail forwarding loop for bob@site.test" in bounce[0]
        assert [m for m in h.maildir("alice") if m.endswith(b"\n\nhello\n")]  # alice's copy
        await h.queue.close()
    asyncio.run(scenario())


def test_local_and_remote_delivery(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        await h.send("bob@site.test", "carol@example.test")
        assert await run_until(h, lambda: h.maildir("bob") and agent.deliveries)
        assert agent.deliveries == ["carol@example.test"]
        [mail] = h.maildir("bob")
        assert mail.startswith(b"Return-Path: <alice@site.test>\nDelivered-To: bob@site.test")  # Unix text
        assert b"\r" not in mail and mail.endswith(b"\n\nhello\n")  # LF lines, as every MTA writes
        assert b"Received: from client ([127.0.0.1])" in mail
        assert await h.queue.rows() == []
        await h.queue.close()
    asyncio.run(scenario())


def test_deferred_recipient_is_retried(tmp_path):
    agent = ScriptedAgent(lambda rcpt, attempt: "deferred" if attempt == 1 else "delivered")

    async def scenario():
        h = Harness(tmp_path, agent)
        await h.send("carol@example.test")
        assert await run_until(h, lambda: agent.deliveries)
        assert agent.attempts == {"carol@example.test": 2}
        await h.queue.close()
    asyncio.run(scenario())


def test_bounce_reaches_the_local_sender(tmp_path):
    agent = ScriptedAgent(lambda rcpt, attempt: "bounced")

    async def scenario():
        h = Harness(tmp_path, agent)
        await h.send("nobody@example.test")
        assert await run_until(h, lambda: h.maildir("alice"))
        [dsn] = h.maildir("alice")
        assert b"Return-Path: <>" in dsn and b"Status: 5.1.1" in dsn
        assert await h.queue.rows() == []
        await h.queue.close()
    asyncio.run(scenario())


def test_bounce_of_a_bounce_is_dropped(tmp_path):
    agent = ScriptedAgent(lambda rcpt, attempt: "bounced")

    async def scenario():
        h = Harness(tmp_path, agent)
        await h.send("nobody@example.test", sender=Address("", ""))
        assert await run_until(h, lambda: agent.attempts)
        await asyncio.sleep(0.3)
        assert await h.queue.rows() == [] and h.maildir("alice") == []
        await h.queue.close()
    asyncio.run(scenario())


def test_delay_warning_names_the_delayed_recipients_of_every_destination(tmp_path):
    # One message, two destinations (two jobs): the warning the first job sends
    # must not stop the second job's recipient from being told about (RFC 3461).
    agent = ScriptedAgent(lambda rcpt, attempt: "deferred")

    async def scenario():
        h = Harness(tmp_path, agent, queue_extra='delay_warning = "1s"')
        await h.send("carol@one.test", "dave@two.test")
        def warned():
            return b"".join(m for m in h.maildir("alice") if b"Action: delayed" in m)
        assert await run_until(h, lambda: b"carol@one.test" in warned()
                               and b"dave@two.test" in warned(), timeout=8)
        assert await run_until(h, lambda: min(agent.attempts.values()) >= 5, timeout=8)
        reports = [m for m in h.maildir("alice") if b"Action: delayed" in m]
        for rcpt in (b"Final-Recipient: rfc822; carol@one.test",
                     b"Final-Recipient: rfc822; dave@two.test"):
            assert sum(rcpt in m for m in reports) == 1  # each told once
        await h.queue.close()
    asyncio.run(scenario())


def test_held_route_waits_for_release_while_local_mail_flows(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent, held=True)
        await h.send("carol@example.test", "bob@site.test")
        assert await run_until(h, lambda: h.maildir("bob"))
        await asyncio.sleep(0.3)
        assert agent.attempts == {}
        stopping = asyncio.Event()
        task = asyncio.create_task(h.manager.run(stopping))
        await asyncio.sleep(0.2)
        assert agent.attempts == {}  # held state persisted across the restart
        await h.manager.release("uplink", "test")
        await wait_until(lambda: agent.deliveries, 5)
        stopping.set()
        await task
        assert agent.deliveries == ["carol@example.test"]
        await h.queue.close()
    asyncio.run(scenario())


def test_dead_destination_defers_without_connecting(tmp_path):
    agent = ScriptedAgent(lambda rcpt, attempt: "deferred", failing_destination=True)

    async def scenario():
        h = Harness(tmp_path, agent, concurrency=1)  # one worker: jobs in series
        for n in range(5):
            await h.send(f"user{n}@example.test")
        await run_until(h, lambda: False, timeout=0.5)
        assert sum(agent.attempts.values()) == 1  # the other four were deferred unseen
        rows = await h.queue.rows()
        assert len(rows) == 5
        assert sum("connection refused" in r.last_error for r in rows) == 4
        await h.queue.close()
    asyncio.run(scenario())


def test_two_flushes_at_once_deliver_each_recipient_once(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        first = Harness(tmp_path, agent, owner="test:1:1")
        second = Harness(tmp_path, agent, owner="test:2:2")
        for n in range(60):
            await first.send(f"user{n}@example.test", f"other{n}@example.test")
        everything = lambda entry, route: True  # noqa: E731
        reports = await asyncio.gather(first.manager.flush(everything),
                                       second.manager.flush(everything))
        assert sorted(agent.deliveries) == sorted(
            [f"user{n}@example.test" for n in range(60)] +
            [f"other{n}@example.test" for n in range(60)])
        assert sum(r.delivered for r in reports) == 120
        await first.queue.close()
        await second.queue.close()
    asyncio.run(scenario())


def test_batched_route_waits_for_enough_mail(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent, route_extra="batch_messages = 3")
        runs = []
        h.manager.on_release = lambda route, cause: runs.append((route, cause))
        stopping = asyncio.Event()
        task = asyncio.create_task(h.manager.run(stopping))
        await h.send("a@example.test")
        await h.send("b@example.test")
        await asyncio.sleep(0.5)
        assert agent.deliveries == []  # two wait: the link is not brought up
        await h.send("c@example.test")
        await wait_until(lambda: len(agent.deliveries) == 3, 5)
        stopping.set()
        await task
        assert sorted(agent.deliveries) == ["a@example.test", "b@example.test", "c@example.test"]
        assert runs == [("uplink", "batch rule")]  # the hook that sends ETRN upstream
        await h.queue.close()
    asyncio.run(scenario())


def test_large_message_waits_for_the_unmetered_route(tmp_path):
    agent = ScriptedAgent()
    extra = '''max_message_size = "1k"
[[route]]
name = "dock"
start_held = true'''

    async def scenario():
        h = Harness(tmp_path, agent, route_extra=extra)
        envelope = Envelope(ALICE, (Address("big", "example.test"),))
        await h.submission.submit(envelope, BODY + b"x" * 2000 + b"\r\n",
                                  ClientInfo("127.0.0.1", "client"))
        await h.send("small@example.test")
        stopping = asyncio.Event()
        task = asyncio.create_task(h.manager.run(stopping))
        await wait_until(lambda: agent.deliveries, 3)
        await asyncio.sleep(0.3)
        assert agent.deliveries == ["small@example.test"]  # big waits: dock is held
        await h.manager.release("dock", "docked")
        await wait_until(lambda: len(agent.deliveries) == 2, 3)
        stopping.set()
        await task
        assert agent.deliveries == ["small@example.test", "big@example.test"]
        await h.queue.close()
    asyncio.run(scenario())


def test_daemon_takes_back_the_leases_of_a_runner_that_died(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        stopping = asyncio.Event()
        h.manager.scheduler.hold("uplink")  # keep the daemon off it while the "flush" claims
        task = asyncio.create_task(h.manager.run(stopping))
        await asyncio.sleep(0.2)
        await h.send("carol@example.test")
        [entry] = await h.queue.walk()
        dead_flush = f"{socket.gethostname()}:999999:1"  # this host, no such process
        claimed = await h.queue.claim([entry.recipient_id], dead_flush, 3600, entry.next_try)
        assert claimed.claimed  # ... and then that flush was killed before delivering
        await h.manager.release("uplink", "test")
        await wait_until(lambda: agent.deliveries, 5)
        stopping.set()
        await task
        assert agent.deliveries == ["carol@example.test"]
        await h.queue.close()
    asyncio.run(scenario())


class OutageQueue:
    """The harness's queue, with claims and records that fail while `down` (a database away)."""

    def __init__(self, queue, fail: set[str]):
        self._queue = queue
        self._fail = fail
        self.down = True
        self.failed: dict[str, int] = {}

    def __getattr__(self, name):
        real = getattr(self._queue, name)
        if name not in self._fail:
            return real

        async def guarded(*args, **kwargs):
            if self.down:
                self.failed[name] = self.failed.get(name, 0) + 1
                raise QueueError(f"queue database: {name} refused (test)")
            return await real(*args, **kwargs)
        return guarded


def through_an_outage(tmp_path, fail: set[str], while_down) -> tuple[list[str], list]:
    """Carol's mail through a store outage: the deliveries and the queue's rows at the end.

    The manager runs on a store refusing the calls in `fail` while `await
    while_down(h, flaky, agent, task)` looks; then the store is back, and once
    carol is delivered and nothing is in flight the manager stops.
    """
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        flaky = OutageQueue(h.queue, fail)
        h.manager = Manager(h.config, flaky, Router(h.config), {"smtp": agent, "local": None},
                            SystemClock(), "test:1:1")
        h.submission.on_queued = h.manager.queued
        await h.send("carol@example.test")
        stopping = asyncio.Event()
        task = asyncio.create_task(h.manager.run(stopping))
        await while_down(h, flaky, agent, task)
        flaky.down = False
        assert await wait_until(lambda: agent.deliveries and not h.manager._in_flight)
        stopping.set()
        await task
        rows = await h.queue.rows()
        await h.queue.close()
        return agent.deliveries, rows
    return asyncio.run(scenario())


def test_claims_failing_while_the_store_is_away_wait_and_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(manager_module, "CLAIM_RETRY", 0.2)

    async def while_down(h, flaky, agent, task):
        assert await wait_until(lambda: flaky.failed.get("claim", 0) >= 2)
        assert not task.done() and agent.deliveries == []  # the manager lives on
    assert through_an_outage(tmp_path, {"claim"}, while_down) == (["carol@example.test"], [])


def test_outcomes_the_store_cannot_take_are_recorded_when_it_is_back(tmp_path):
    async def while_down(h, flaky, agent, task):
        assert await wait_until(lambda: flaky.failed.get("record", 0) >= 1)
        await asyncio.sleep(0.3)  # several polls while the store is away
        [row] = await h.queue.rows()
        assert row.state == "claimed"  # still leased: nobody else may send it meanwhile
    # Recorded once the store is back, not sent again:
    assert through_an_outage(tmp_path, {"record"}, while_down) == (["carol@example.test"], [])
