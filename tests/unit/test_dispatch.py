"""The dispatcher: per-destination and per-route connection limits."""

import asyncio

from tidepost.address import Address
from tidepost.clock import SystemClock
from tidepost.manager.dispatch import Dispatcher
from tidepost.model import DeliveryJob, MessageInfo, QueuedRecipient
from tidepost.outcomes import deferred, delivered
from tidepost.routing.routes import Destination
from tidepost.scheduler.backoff import Backoff


class Meter:
    """Sessions that take a moment and count how many are open at once."""

    def __init__(self):
        self.open = {}
        self.peak = {}

    def session(self, destination):
        meter = self

        class Session:
            destination_failed = None
            depth = 0

            async def deliver(self, job, overlap=None):
                route = destination.route
                meter.open[route] = meter.open.get(route, 0) + 1
                meter.peak[route] = max(meter.peak.get(route, 0), meter.open[route])
                await asyncio.sleep(0.02)
                meter.open[route] -= 1
                return [delivered(r.recipient_id, "250 ok") for r in job.recipients]

            async def close(self):
                pass
        return Session()


def job(n: int, domain: str) -> DeliveryJob:
    info = MessageInfo(n, f"Q{n}", Address("a", "site.test"), 0.0, 100)
    return DeliveryJob(info, [QueuedRecipient(n, n, Address("u", domain))], "", domain)


def test_route_limit_bounds_connections_across_destinations_but_not_other_routes():
    meter = Meter()
    done = []

    async def record(job, outcomes):
        done.append(job.message.message_id)

    async def main():
        async with asyncio.TaskGroup() as tasks:
            dispatcher = Dispatcher(
                tasks, SystemClock(), Backoff(), meter.session,
                concurrency_of=lambda destination: 10, load_body=lambda mid: _body(),
                on_done=record, max_concurrency=100,
                route_limit=lambda route, waiting: 4 if route == "uplink" else 0)
            for n in range(50):  # 5 domains x 10 jobs on the uplink
                domain = f"d{n % 5}.test"
                dispatcher.submit(job(n, domain), Destination("uplink", domain))
            for n in range(50, 70):
                dispatcher.submit(job(n, "lan.test"), Destination("lan", "lan.test"))
            await dispatcher.wait_idle()
    asyncio.run(main())
    assert sorted(done) == list(range(70))
    assert meter.peak["uplink"] == 4          # 5 domains x 10 allowed, the route says 4
    assert meter.peak["lan"] == 10            # its destination concurrency, no route cap


async def _body() -> bytes:
    return b"Subject: x\r\n\r\nx\r\n"


class Pipelined:
    """A session of depth 1 that notes how jobs overlap on it."""

    destination_failed = None
    depth = 1

    def __init__(self, recorded: list[int]):
        self.recorded = recorded
        self.in_flight = self.peak = 0
        self.content_after: dict[int, list[int]] = {}  # job -> jobs recorded when its content went

    async def deliver(self, job, overlap=None):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        overlap.mark_ready()
        if overlap.gate is not None:
            await overlap.gate.wait()
        self.content_after[job.message.message_id] = list(self.recorded)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return [delivered(r.recipient_id, "250 ok") for r in job.recipients]

    async def close(self):
        pass


def test_a_pipelining_session_overlaps_jobs_but_each_content_waits_for_the_record_before():
    recorded: list[int] = []
    session = Pipelined(recorded)

    async def record(job, outcomes):
        await asyncio.sleep(0.005)
        recorded.append(job.message.message_id)

    async def main():
        async with asyncio.TaskGroup() as tasks:
            dispatcher = Dispatcher(tasks, SystemClock(), Backoff(), lambda d: session,
                                    concurrency_of=lambda d: 1, load_body=lambda m: _body(),
                                    on_done=record, max_concurrency=10)
            for n in range(8):
                dispatcher.submit(job(n, "d.test"), Destination("uplink", "d.test"))
            await asyncio.sleep(0.03)  # a late job joins the running worker
            dispatcher.submit(job(8, "d.test"), Destination("uplink", "d.test"))
            await dispatcher.wait_idle()
    asyncio.run(main())
    assert recorded == list(range(9))
    assert session.peak == 3  # depth + 2: awaiting reply, awaiting 354, commands offered
    for n in range(1, 9):
        assert n - 1 in session.content_after[n]  # the job before was recorded first


def test_a_dead_destination_is_dialled_again_while_jobs_keep_coming():
    """A session that failed defers its later jobs without dialling; its worker must
    end so that, after the backoff, a new session dials again (bench/crash.py found
    a site deferring forever to a receiver that had long been back up)."""
    dials = []
    outcomes = []

    def session(destination):
        class Session:
            destination_failed = None
            depth = 0

            async def deliver(self, job, overlap=None):
                if self.destination_failed is not None:  # as SmtpAgentSession does
                    return [deferred(r.recipient_id, *self.destination_failed)
                            for r in job.recipients]
                dials.append(asyncio.get_running_loop().time())
                await asyncio.sleep(0.005)
                if len(dials) == 1:  # the first dial fails; the destination is back after
                    self.destination_failed = ("4.4.1", "connection refused")
                    return [deferred(r.recipient_id, "4.4.1", "connection refused")
                            for r in job.recipients]
                return [delivered(r.recipient_id, "250 ok") for r in job.recipients]

            async def close(self):
                pass
        return Session()

    async def main():
        async with asyncio.TaskGroup() as tasks:
            async def record(job, result):  # a deferred job comes back, as a retry would
                outcomes.append(result[0].verdict.value)
                if result[0].verdict.value == "deferred" and len(outcomes) < 3000:
                    await asyncio.sleep(0.001)
                    dispatcher.submit(job, Destination("uplink", "relay.test"))

            dispatcher = Dispatcher(
                tasks, SystemClock(), Backoff(min_backoff=0.05, max_backoff=0.05), session,
                concurrency_of=lambda destination: 1, load_body=lambda mid: _body(),
                on_done=record, max_concurrency=10)
            for n in range(20):
                dispatcher.submit(job(n, "relay.test"), Destination("uplink", "relay.test"))
            await dispatcher.wait_idle()
    asyncio.run(main())
    assert len(dials) >= 2, "the destination was never tried again"
    assert "delivered" in outcomes
