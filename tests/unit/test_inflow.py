"""Intake pacing (submission/inflow.py): tokens from delivery while the queue is behind."""

import asyncio

from tidepost.submission.inflow import InFlow


def run(coro):
    return asyncio.run(coro)


def test_no_wait_while_delivery_keeps_up():
    async def scenario():
        inflow = InFlow(1.0, behind=lambda: False)
        await asyncio.wait_for(inflow.pace(), 0.05)
        return inflow.paused
    assert run(scenario()) < 0.05


def test_behind_intake_waits_for_each_delivery():
    async def scenario():
        inflow = InFlow(5.0, behind=lambda: True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(0.2, inflow.delivered)
        await inflow.pace()
        waited = loop.time() - start
        loop.call_later(0.2, inflow.delivered)
        await inflow.pace()  # the first token was used: the second message waits again
        return waited, loop.time() - start
    first, both = run(scenario())
    assert 0.15 < first < 1.0 and 0.35 < both < 1.5


def test_nobody_waits_longer_than_the_delay():
    async def scenario():
        inflow = InFlow(0.2, behind=lambda: True)
        await asyncio.wait_for(inflow.pace(), 1.0)
        return inflow.paused
    assert 0.15 < run(scenario()) < 0.6


def test_a_delay_of_zero_disables_pacing():
    async def scenario():
        inflow = InFlow(0.0, behind=lambda: True)
        await asyncio.wait_for(inflow.pace(), 0.05)
    run(scenario())
