"""Slow and greedy clients: deadlines, the DATA rate, the connection reserve.

Transcripts against a real SmtpServer on loopback (helpers from
test_smtp_server.py), plus the pure policies (DataPace, Admission) on a
fake clock.  The flood against a whole daemon is in
tests/integration/test_lockout.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from test_smtp_server import Client, make_config, run

from tidepost.config.schema import SmtpServerConfig
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.admission import (AUTH_MEMORY, Admission, AdmissionStatistics,
                                            Slot)
from tidepost.smtp_server.pace import DataPace


async def trickle(client: Client, data: bytes, interval: float) -> None:
    """Send `data` one octet every `interval` seconds, until the server hangs up."""
    for octet in data:
        try:
            await client.send(bytes([octet]))
        except ConnectionError:
            return
        await asyncio.sleep(interval)


async def closed_with(client: Client, timeout: float) -> tuple[object, float]:
    """The reply that ends the session, and how long after the call it came."""
    start = time.monotonic()
    reply = await client.reply(timeout)
    elapsed = time.monotonic() - start
    assert await client.at_eof()
    return reply, elapsed


async def in_data(connect) -> Client:
    """A client that has said EHLO, MAIL, RCPT and DATA and got its 354."""
    c = await connect()
    await c.ehlo()
    await c.cmd("MAIL FROM:<a@origin.test>")
    await c.cmd("RCPT TO:<alice@local.example>")
    assert await c.cmd("DATA") == S.S354_START_DATA
    return c


def test_trickled_command_line_is_closed_at_its_deadline():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        sender = asyncio.create_task(trickle(c, b"NOOP " + b"x" * 200 + b"\r\n", 0.05))
        reply, elapsed = await closed_with(c, 5.0)
        sender.cancel()
        assert reply == S.S421_COMMAND_TIMEOUT
        assert 0.4 < elapsed < 2.0  # every read came well inside idle_timeout
        assert server.statistics().timeouts == 1
    run(scenario, make_config(command_deadline=0.5, idle_timeout=5.0))


def test_complete_lines_reset_the_command_deadline():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        for _ in range(6):  # 6 x 0.2 s: longer than the deadline in all
            await asyncio.sleep(0.2)
            assert await c.cmd("NOOP") == S.S250_OK
    run(scenario, make_config(command_deadline=0.5, idle_timeout=5.0))


def test_half_a_line_after_a_complete_one_times_out():
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(b"NOOP\r\nNO")  # a complete line, then half of one
        assert await c.reply() == S.S250_OK
        reply, _ = await closed_with(c, 5.0)
        assert reply == S.S421_COMMAND_TIMEOUT
    run(scenario, make_config(command_deadline=0.3, idle_timeout=5.0))


def test_trickled_data_is_closed_for_its_rate():
    async def scenario(connect, server):
        c = await in_data(connect)
        sender = asyncio.create_task(trickle(c, b"Subject: slow\r\n\r\n" * 50, 0.02))
        reply, elapsed = await closed_with(c, 5.0)
        sender.cancel()
        assert reply == S.S421_DATA_TOO_SLOW
        assert elapsed < 2.5  # the first window (the grace) plus one
    submission = run(scenario, make_config(min_data_rate=200, data_rate_window=0.5,
                                           idle_timeout=5.0))
    assert submission.submitted == []


def test_data_at_the_minimum_rate_is_accepted():
    async def scenario(connect, server):
        c = await in_data(connect)
        for _ in range(8):  # 8 x 0.15 s, 100 octets each: ~650 octets/s
            await c.send(b"x" * 98 + b"\r\n")
            await asyncio.sleep(0.15)
        await c.send(b".\r\n")
        assert await c.reply() == S.queued("Q1")
    run(scenario, make_config(min_data_rate=200, data_rate_window=0.3, idle_timeout=5.0))


def test_session_time_limit_for_untrusted_clients_only():
    async def untrusted(connect, server):
        c = await connect()
        await c.ehlo()
        await asyncio.sleep(0.4)
        assert await c.cmd("NOOP") == S.S421_SESSION_TOO_LONG
        assert await c.at_eof()

    async def lan(connect, server):
        c = await connect()
        await c.ehlo()
        await asyncio.sleep(0.4)
        assert await c.cmd("NOOP") == S.S250_OK
    run(untrusted, make_config(max_session_time=0.3))
    run(lan, make_config(max_session_time=0.3, relay_networks=("127.0.0.1/32",)))


def test_full_server_answers_421_at_once_and_keeps_the_reserve():
    async def scenario(connect, server):
        held = [await connect() for _ in range(2)]
        for c in held:
            assert (await c.reply()).code == 220
        start = time.monotonic()
        third = await connect()
        assert await third.reply() == S.S421_TOO_MANY_CONNECTIONS
        assert time.monotonic() - start < 1.0
        assert await third.at_eof()
        assert server.statistics().connections_refused == 1
    run(scenario, make_config(max_connections=3, reserved_connections=1))


def test_refusals_never_wait_for_clients_that_do_not_read():
    async def scenario(connect, server):
        (await connect()).writer.transport.pause_reading()  # the one untrusted slot
        start = time.monotonic()
        refused = []
        for _ in range(20):  # none reads its 421; none may hold up the next
            refused.append(await connect())
            refused[-1].writer.transport.pause_reading()
        while server.statistics().connections_refused < 20:
            await asyncio.sleep(0.01)
        assert time.monotonic() - start < 1.0
        refused[0].writer.transport.resume_reading()
        assert await refused[0].reply() == S.S421_TOO_MANY_CONNECTIONS
    run(scenario, make_config(max_connections=2, reserved_connections=1))


# -- the pure policies -------------------------------------------------------------------

def test_data_pace_judges_each_window():
    pace = DataPace(100, 10.0, start=0.0)
    assert pace.received(50, 5.0)          # the grace window is not judged early
    assert pace.received(2000, 9.0)        # window 1: 2050 octets >= 1000
    assert pace.received(999, 15.0)        # window 2 so far
    assert not pace.received(0, 20.0)      # window 2 ended with 999 < 1000
    burst = DataPace(100, 10.0, start=0.0)
    assert burst.received(10**6, 1.0)      # a burst first earns no credit later
    assert not burst.received(0, 20.5)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(**limits) -> tuple[Admission, Clock]:
    clock = Clock()
    config = dataclasses.replace(SmtpServerConfig(), **limits)
    return Admission(config, lambda ip: ip.startswith("10."), clock), clock


def test_admission_reserve_per_client_and_rate():
    gate, clock = admission(max_connections=5, reserved_connections=2,
                            max_connections_per_client=2, max_connection_rate=3)
    a1, a2 = gate.admit("192.0.2.1"), gate.admit("192.0.2.1")
    assert isinstance(a1, Slot) and isinstance(a2, Slot)
    assert gate.admit("192.0.2.1") == S.S421_TOO_MANY_FROM_CLIENT
    assert isinstance(gate.admit("192.0.2.2"), Slot)
    assert gate.admit("192.0.2.3") == S.S421_TOO_MANY_CONNECTIONS   # untrusted pool full
    lan = [gate.admit("10.0.0.1"), gate.admit("10.0.0.1")]           # the reserve
    assert all(isinstance(s, Slot) and s.reserved for s in lan)
    assert gate.admit("10.0.0.2") == S.S421_TOO_MANY_CONNECTIONS    # all 5 taken
    gate.release(a1)
    gate.release(a2)
    assert gate.admit("192.0.2.1") == S.S421_CONNECTION_RATE  # 4th attempt in a minute
    clock.now = 61.0
    assert isinstance(gate.admit("192.0.2.1"), Slot)
    assert gate.statistics() == AdmissionStatistics(active=4, reserved=2, untrusted=2)


def test_admission_authenticated_clients_move_to_the_reserve():
    gate, clock = admission(max_connections=3, reserved_connections=1,
                            max_connection_rate=0)
    first = gate.admit("192.0.2.9")
    assert isinstance(first, Slot) and not first.reserved
    promoted = gate.authenticated(first)
    assert promoted.reserved and gate.statistics().untrusted == 0
    assert isinstance(gate.admit("198.51.100.1"), Slot)
    assert isinstance(gate.admit("198.51.100.2"), Slot)
    assert gate.admit("198.51.100.3") == S.S421_TOO_MANY_CONNECTIONS
    gate.release(promoted)
    again = gate.admit("192.0.2.9")                 # known now: takes the reserve
    assert isinstance(again, Slot) and again.reserved
    gate.release(again)
    clock.now = AUTH_MEMORY + 1
    assert gate.admit("192.0.2.9") == S.S421_TOO_MANY_CONNECTIONS   # forgotten


def test_relay_network_client_may_exceed_per_client_limits():
    gate, _ = admission(max_connections=10, reserved_connections=2,
                        max_connections_per_client=1, max_connection_rate=1)
    assert all(isinstance(gate.admit("10.1.1.1"), Slot) for _ in range(5))

