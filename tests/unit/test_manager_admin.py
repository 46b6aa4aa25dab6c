"""The running manager and the queue admin commands of another process.

The admin's changes are made through a second SqliteQueue on the same file,
as `tidepost queue hold|release|requeue|delete` make them; the manager
learns of them from the queue only (its claim, its change log).
"""

import asyncio
import contextlib
import time

from test_manager import Harness, ScriptedAgent, wait_until
from tidepost.outcomes import deferred
from tidepost.queue.backend import RecipientUpdate
from tidepost.queue.selection import Selection
from tidepost.queue.sqlite import SqliteQueue


@contextlib.asynccontextmanager
async def daemon_and_admin(h: Harness):
    """Run the manager's daemon loop beside an admin's own queue; stop and close after."""
    admin = SqliteQueue(h.spool / "queue.sqlite")
    stopping = asyncio.Event()
    task = None

    def start() -> None:
        nonlocal task
        task = asyncio.create_task(h.manager.run(stopping))

    try:
        yield admin, start
    finally:
        stopping.set()
        if task is not None:
            await task
        await admin.close()
        await h.queue.close()


def test_a_held_message_waits_and_is_delivered_once_released(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        async with daemon_and_admin(h) as (admin, start):
            held = await h.send("carol@example.test")  # its queue id
            await admin.hold_recipients(Selection(queue_ids=(held,)), time.time())
            start()
            await h.send("dave@example.test")
            assert await wait_until(lambda: "dave@example.test" in agent.deliveries)
            await asyncio.sleep(0.5)  # five polls: the held one stays
            assert agent.deliveries == ["dave@example.test"]
            await admin.release_recipients(Selection(queue_ids=(held,)), time.time())
            assert await wait_until(lambda: "carol@example.test" in agent.deliveries)
        assert agent.deliveries == ["dave@example.test", "carol@example.test"]
    asyncio.run(scenario())


def test_a_message_held_while_scheduled_is_not_delivered(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent, held=True)
        async with daemon_and_admin(h) as (admin, start):
            start()
            await h.send("carol@example.test")  # in the daemon's scheduler now
            await admin.hold_recipients(Selection(), time.time())
            await h.manager.release("uplink", "test")  # proposed again; the claim refuses
            await asyncio.sleep(0.5)
            assert agent.deliveries == []
            assert [r.state for r in await admin.rows()] == ["held"]
            await admin.delete_recipients(Selection(), time.time())
            assert await admin.rows() == []
        assert agent.deliveries == []
    asyncio.run(scenario())


def test_a_requeued_recipient_is_tried_now_not_at_its_retry_time(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        async with daemon_and_admin(h) as (admin, start):
            await h.send("carol@example.test")
            [entry] = await admin.walk()
            # A `tidepost flush` tried it earlier and was told to come back in an hour.
            await admin.claim([entry.recipient_id], "flush:1:1", 60, time.time(), force=True)
            later = deferred(entry.recipient_id, "4.2.0", "450 busy")
            await admin.record("flush:1:1", [RecipientUpdate(later, time.time() + 3600)])
            start()
            await asyncio.sleep(0.5)
            assert agent.deliveries == []
            await admin.requeue_recipients(Selection(), time.time())
            assert await wait_until(lambda: agent.deliveries == ["carol@example.test"])
    asyncio.run(scenario())


def test_the_scheduler_forgets_recipients_held_or_deleted_on_a_held_route(tmp_path):
    # 10,000 deleted on a held route stayed in the daemon's memory until the
    # route's next run (a relay's customer may not connect for weeks).
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent, held=True)
        async with daemon_and_admin(h) as (admin, start):
            kept = await h.send("carol@example.test")
            gone = await h.send("dave@example.test")
            start()
            await asyncio.sleep(0.3)  # its start-up done: the change log is followed from here
            assert len(h.manager.scheduler) == 2
            await admin.delete_recipients(Selection(queue_ids=(gone,)), time.time())
            assert await wait_until(lambda: len(h.manager.scheduler) == 1)
            await admin.hold_recipients(Selection(queue_ids=(kept,)), time.time())
            assert await wait_until(lambda: len(h.manager.scheduler) == 0)
            await admin.release_recipients(Selection(queue_ids=(kept,)), time.time())
            assert await wait_until(lambda: len(h.manager.scheduler) == 1)
            await h.manager.release("uplink", "test")
            assert await wait_until(lambda: agent.deliveries == ["carol@example.test"])
        assert agent.deliveries == ["carol@example.test"]
    asyncio.run(scenario())
