"""eventloop.py: the remembered running loop, and Flag (an Event without getpid per wait)."""

from __future__ import annotations

import asyncio

import pytest

from tidepost.eventloop import Flag, running_loop


def test_running_loop_follows_a_new_loop():
    async def which():
        assert running_loop() is asyncio.get_running_loop()
        return running_loop()
    first, second = asyncio.run(which()), asyncio.run(which())
    assert first is not second and first.is_closed()
    with pytest.raises(RuntimeError):
        running_loop()  # no loop runs here now


def test_flag_wakes_every_waiter_and_stays_set_until_cleared():
    async def scenario():
        flag = Flag()
        waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        flag.set()
        assert await asyncio.gather(*waiters) == [True] * 3
        assert flag.is_set() and await flag.wait()  # at once while set
        flag.clear()
        late = asyncio.ensure_future(flag.wait())
        await asyncio.sleep(0.01)
        assert not late.done()
        flag.set()
        assert await late
    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_no_waiter_behind():
    async def scenario():
        flag = Flag()
        waiter = asyncio.ensure_future(flag.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert flag._waiters == []
        flag.set()  # nobody left to wake: no error
    asyncio.run(scenario())
