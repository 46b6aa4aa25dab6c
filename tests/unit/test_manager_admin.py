"""The running manager and the queue admin commands of another process.

The admin's changes are made through a second SqliteQueue on the same file,
as `tidepost queue hold|release|requeue|delete` make them; the manager
learns of them from the queue only (its claim, its change log).
"""

import asyncio
import time

from test_manager import Harness, ScriptedAgent, wait_until
from tidepost.outcomes import deferred
from tidepost.queue.backend import RecipientUpdate
from tidepost.queue.selection import Selection
from tidepost.queue.sqlite import SqliteQueue


async def running(h: Harness):
    """Start the manager's daemon loop; returns (stop event, task)."""
    stopping = asyncio.Event()
    return stopping, asyncio.create_task(h.manager.run(stopping))


def test_a_held_message_waits_and_is_delivered_once_released(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        admin = SqliteQueue(tmp_path / "queue.sqlite")
        held = await h.send("carol@example.test")  # its queue id
        await admin.hold_recipients(Selection(queue_ids=(held,)), time.time())
        stopping, task = await running(h)
        await h.send("dave@example.test")
        assert await wait_until(lambda: "dave@example.test" in agent.deliveries)
        await asyncio.sleep(0.5)  # five polls: the held one stays
        assert agent.deliveries == ["dave@example.test"]
        await admin.release_recipients(Selection(queue_ids=(held,)), time.time())
        assert await wait_until(lambda: "carol@example.test" in agent.deliveries)
        stopping.set()
        await task
        assert agent.deliveries == ["dave@example.test", "carol@example.test"]
        await admin.close()
        await h.queue.close()
    asyncio.run(scenario())


def test_a_message_held_while_scheduled_is_not_delivered(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent, held=True)
        admin = SqliteQueue(tmp_path / "queue.sqlite")
        stopping, task = await running(h)
        await h.send("carol@example.test")  # in the daemon's scheduler now
        await admin.hold_recipients(Selection(), time.time())
        await h.manager.release("uplink", "test")     # the scheduler proposes it; the claim refuses
        await asyncio.sleep(0.5)
        assert agent.deliveries == []
        assert [r.state for r in await admin.rows()] == ["held"]
        await admin.delete_recipients(Selection(), time.time())
        stopping.set()
        await task
        assert await admin.rows() == [] and agent.deliveries == []
        await admin.close()
        await h.queue.close()
    asyncio.run(scenario())


def test_a_requeued_recipient_is_tried_now_not_at_its_retry_time(tmp_path):
    agent = ScriptedAgent()

    async def scenario():
        h = Harness(tmp_path, agent)
        admin = SqliteQueue(tmp_path / "queue.sqlite")
        await h.send("carol@example.test")
        [entry] = await admin.walk()
        # A `tidepost flush` tried it earlier and was told to come back in an hour.
        await admin.claim([entry.recipient_id], "flush:1:1", 60, time.time(), force=True)
        later = deferred(entry.recipient_id, "4.2.0", "450 busy")
        await admin.record("flush:1:1", [RecipientUpdate(later, time.time() + 3600)])
        stopping, task = await running(h)
        await asyncio.sleep(0.5)
        assert agent.deliveries == []
        await admin.requeue_recipients(Selection(), time.time())
        assert await wait_until(lambda: agent.deliveries == ["carol@example.test"])
        stopping.set()
        await task
        await admin.close()
        await h.queue.close()
    asyncio.run(scenario())
