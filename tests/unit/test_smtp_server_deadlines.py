"""Read deadlines on one lazily re-armed timer (smtp_server/deadlines.py).

The server-level behaviour (421 after a trickled line, the DATA rate) is in
test_smtp_server_slow.py; here the timer's own rules, on a real event loop
with a stream that never sends.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tidepost.eventloop import current_task
from tidepost.smtp_server.deadlines import Deadlines
from tidepost.smtp_server.reader import CommandTimeout, SmtpReader


class SilentStream:
    """A client that sends `lines` (one per read, after `gap` seconds), then nothing."""

    def __init__(self, lines: list[bytes] = (), gap: float = 0.0):
        self.lines = list(lines)
        self.gap = gap

    async def read(self, n: int) -> bytes:
        if self.lines:
            await asyncio.sleep(self.gap)
            return self.lines.pop(0)
        await asyncio.Event().wait()  # for ever
        return b""


async def guarded_sleep(deadlines: Deadlines, seconds: float, timeout: float) -> None:
    """Sleep `seconds` under a deadline of `timeout` (the pattern reader.py uses)."""
    token = deadlines.start(timeout)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if deadlines.expired(token):
            raise TimeoutError() from None
        raise
    finally:
        deadlines.stop(token)


def test_a_wait_past_its_deadline_times_out_at_the_deadline():
    async def scenario():
        deadlines = Deadlines()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await guarded_sleep(deadlines, 5.0, 0.05)
        assert 0.04 <= time.monotonic() - start < 1.0
        assert current_task().cancelling() == 0  # the cancellation was taken back
        await asyncio.sleep(0)  # and no second one is pending
    asyncio.run(scenario())


def test_the_timer_set_for_an_earlier_read_does_not_cut_a_later_one_short():
    async def scenario():
        deadlines = Deadlines()
        await guarded_sleep(deadlines, 0.01, 0.1)   # the timer now waits for t+0.1
        start = time.monotonic()
        await guarded_sleep(deadlines, 0.15, 0.3)   # passes t+0.1: re-armed, not fired
        with pytest.raises(TimeoutError):
            await guarded_sleep(deadlines, 5.0, 0.2)
        assert time.monotonic() - start >= 0.15 + 0.19
    asyncio.run(scenario())


def test_a_shorter_deadline_moves_the_timer_forward():
    async def scenario():
        deadlines = Deadlines()
        await guarded_sleep(deadlines, 0.0, 60.0)   # timer at t+60
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await guarded_sleep(deadlines, 5.0, 0.05)
        assert time.monotonic() - start < 1.0
    asyncio.run(scenario())


def test_a_cancellation_from_outside_is_not_taken_for_a_timeout():
    async def scenario():
        deadlines = Deadlines()
        task = asyncio.ensure_future(guarded_sleep(deadlines, 5.0, 0.05))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)  # past the deadline: the timer finds nothing open
        assert deadlines._fired is None
    asyncio.run(scenario())


def test_close_lets_go_of_the_timer():
    async def scenario():
        deadlines = Deadlines()
        await guarded_sleep(deadlines, 0.0, 300.0)
        assert deadlines._timer is not None  # kept for the next read: that is the point
        deadlines.close()
        assert deadlines._timer is None
    asyncio.run(scenario())


def test_line_deadline_inside_a_longer_idle_timeout_is_a_command_timeout():
    async def scenario():
        reader = SmtpReader(SilentStream([b"NOOP"], gap=0.01), idle_timeout=5.0,
                            line_deadline=0.1)
        with pytest.raises(CommandTimeout):
            await reader.read_line(512)
        reader.close()
    asyncio.run(scenario())


def test_idle_timeout_inside_a_longer_line_deadline_is_a_plain_timeout():
    async def scenario():
        reader = SmtpReader(SilentStream([b"NO"], gap=0.01), idle_timeout=0.1,
                            line_deadline=5.0)
        start = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            await reader.read_line(512)
        assert not isinstance(raised.value, CommandTimeout)
        assert time.monotonic() - start < 1.0
        reader.close()
    asyncio.run(scenario())


def test_complete_lines_keep_coming_under_one_timer():
    async def scenario():
        lines = [b"NOOP\r\n"] * 20
        reader = SmtpReader(SilentStream(lines, gap=0.01), idle_timeout=0.05,
                            line_deadline=0.05)
        for _ in range(20):  # 0.2 s in all, each line within its 0.05 s
            assert await reader.read_line(512) == b"NOOP"
        reader.close()
    asyncio.run(scenario())

