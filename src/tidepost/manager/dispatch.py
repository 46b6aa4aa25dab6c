"""Per-destination delivery: concurrency, connection reuse, destination backoff.

Jobs are queued per Destination (route + next hop).  Up to the destination's
concurrency, a worker task takes jobs off that queue one after another over
one agent session, so consecutive messages to one MX host or smarthost reuse
one SMTP connection; a worker ends when its queue is empty.  On a session
that pipelines (delivery/agent.py, Overlap) the next job starts while the one
before waits for its reply, so a message costs one round trip, not two.  A global
semaphore bounds all workers (delivery.max_concurrency), and one per route
bounds the connections on that route (route.max_connections): on a slow
uplink, 50 connections opened at a release only fill the link's queue and
make TCP send data twice (measured in bench/drain.py).  The route's limit
is asked again whenever a worker waits for it: with `route.rate` it is the
link's connection budget (usage/budget.py), which grows once a round trip
has been measured.

When a session reports `destination_failed` (no MX host answered), the
destination is marked dead for a backoff interval that doubles with each
consecutive failure; until then its jobs are deferred without connecting.
The worker whose session failed ends, and a new one (with a new session)
takes the destination's remaining jobs, so a destination that never runs
out of jobs is still dialled again once its backoff is over.
Config keys read (through the constructor): delivery.max_concurrency,
delivery.destination_concurrency, route.concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from tidepost.clock import Clock
from tidepost.delivery.agent import AgentSession, Overlap
from tidepost.model import DeliveryJob
from tidepost.outcomes import Outcome, deferred
from tidepost.routing.routes import Destination
from tidepost.scheduler.backoff import Backoff

log = logging.getLogger("tidepost.dispatch")

RECOUNT_SECONDS = 0.5  # how often a worker waiting for its route asks the limit again

OnDone = Callable[[DeliveryJob, list[Outcome]], Awaitable[None]]


@dataclass(slots=True)
class _DestinationQueue:
    """Jobs waiting for one destination and the workers serving it."""

    jobs: deque[DeliveryJob] = field(default_factory=deque)
    workers: int = 0


@dataclass(slots=True)
class _DeadDestination:
    """A destination in backoff after consecutive connection-level failures."""

    until: float
    failures: int
    status: str
    reason: str


class Dispatcher:
    """Runs delivery jobs with per-destination workers."""

    def __init__(self, tasks: asyncio.TaskGroup, clock: Clock, backoff: Backoff,
                 open_session: Callable[[Destination], AgentSession],
                 concurrency_of: Callable[[Destination], int],
                 load_body: Callable[[int], Awaitable[bytes]],
                 on_done: OnDone, max_concurrency: int,
                 route_limit: Callable[[str, int], int] = lambda route, waiting: 0,
                 admit: Callable[[DeliveryJob], list[Outcome] | None] = lambda job: None):
        self._tasks = tasks
        self._clock = clock
        self._backoff = backoff
        self._open_session = open_session
        self._concurrency_of = concurrency_of
        self._load_body = load_body
        self._on_done = on_done
        self._slots = asyncio.Semaphore(max_concurrency)
        self._route_limit = route_limit
        self._admit = admit  # data caps: outcomes for a job that may not go now
        self._route_slots: dict[str, _RouteSlots] = {}
        self._queues: dict[Destination, _DestinationQueue] = {}
        self._dead: dict[Destination, _DeadDestination] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.delivered_jobs = 0

    def submit(self, job: DeliveryJob, destination: Destination) -> None:
        """Queue a job for its destination and start a worker if allowed."""
        queue = self._queues.setdefault(destination, _DestinationQueue())
        queue.jobs.append(job)
        self._idle.clear()
        if queue.workers < min(self._concurrency_of(destination), len(queue.jobs)):
            queue.workers += 1
            self._tasks.create_task(self._work(destination, queue))

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        await self._idle.wait()

    def revive(self, destination: Destination) -> None:
        """Forget a destination's backoff: an admin asked for its mail to be tried now."""
        self._dead.pop(destination, None)

    def busy(self, route: str) -> int:
        """Jobs waiting for or in delivery on `route`."""
        return sum(len(queue.jobs) + queue.workers for destination, queue in self._queues.items()
                   if destination.route == route)

    def dead_destinations(self) -> dict[Destination, float]:
        """Destinations in backoff and when they may be tried again."""
        now = self._clock.now()
        return {d: dead.until for d, dead in self._dead.items() if dead.until > now}

    async def _work(self, destination: Destination, queue: _DestinationQueue) -> None:
        """Worker: deliver this destination's jobs over one session."""
        try:
            # The route first: a worker waiting for its route holds no global slot,
            # so a busy uplink cannot starve the LAN.
            async with self._route_slot(destination.route), self._slots:
                session = self._open_session(destination)
                try:
                    await self._serve(destination, session, queue)
                finally:
                    await session.close()
        finally:
            queue.workers -= 1
            if queue.jobs and not queue.workers:
                # Left because its session failed: a fresh worker and session take
                # the rest (deferred at once while the destination is dead).
                queue.workers += 1
                self._tasks.create_task(self._work(destination, queue))
            if not queue.workers and not queue.jobs:
                self._queues.pop(destination, None)
            if not self._queues:
                self._idle.set()

    async def _serve(self, destination: Destination, session: AgentSession,
                     queue: _DestinationQueue) -> None:
        """Deliver the destination's jobs over `session`, overlapping as far as it allows.

        A job starts when every job in flight has its place on the
        connection (`ready`) and fewer than depth + 2 are in flight: one
        waiting for its final reply, one for its 354, and one whose commands
        wait to go out with the content before them.  Its content waits
        until the job `depth` places before it is recorded (its gate).
        """
        wake = asyncio.Event()
        running: list[tuple[asyncio.Task[None], Overlap]] = []
        recorded: deque[asyncio.Event] = deque(maxlen=32)  # of the jobs started, newest last
        async with asyncio.TaskGroup() as tasks:
            while True:
                running = [(task, o) for task, o in running if not task.done()]
                depth = session.depth
                # A session that found its destination dead defers every later
                # job without dialling: with a steady flow of jobs it would never
                # end, and the destination never be tried again.  Leave it.
                failed = session.destination_failed is not None
                if queue.jobs and not failed and _may_start(running, depth):
                    gate = recorded[-depth] if 0 < depth <= len(recorded) else None
                    overlap = Overlap(gate, wake)
                    task = tasks.create_task(self._run_job(destination, session,
                                                           queue.jobs.popleft(), overlap))
                    task.add_done_callback(lambda _: wake.set())
                    running.append((task, overlap))
                    recorded.append(overlap.recorded)
                    continue
                if not running:
                    return
                wake.clear()
                await wake.wait()

    def _route_slot(self, route: str) -> _RouteSlots | contextlib.nullcontext:
        """What bounds the connections on `route` (nothing when it has no limit)."""
        if route not in self._route_slots:
            if not self._route_limit(route, 1):
                return contextlib.nullcontext()
            self._route_slots[route] = _RouteSlots(
                lambda: self._route_limit(route, self._destinations_of(route)))
        return self._route_slots[route]

    def _destinations_of(self, route: str) -> int:
        """Destinations of `route` with jobs waiting or in delivery."""
        return sum(1 for destination in self._queues if destination.route == route)

    async def _run_job(self, destination: Destination, session: AgentSession,
                       job: DeliveryJob, overlap: Overlap) -> None:
        """Deliver one job (or defer it if the destination is dead) and report."""
        try:
            outcomes = self._defer_if_dead(destination, job)
            if outcomes is None:
                try:
                    job.body = await self._load_body(job.message.message_id)
                    outcomes = self._admit(job) or await session.deliver(job, overlap)
                except Exception as exc:  # noqa: BLE001 - never lose the job's outcome
                    outcomes = [deferred(r.recipient_id, "4.3.0", f"delivery failed: {exc}")
                                for r in job.recipients]
                self._note_health(destination, session)
            await self._on_done(job, outcomes)
        except Exception:  # noqa: BLE001 - the lease keeps the recipients safe
            log.exception("%s: recording outcomes failed; the recipients stay leased "
                          "and return to the queue when this runner ends",
                          job.message.queue_id)
        finally:
            job.body = b""
            self.delivered_jobs += 1
            overlap.recorded.set()
            overlap.mark_ready()
            slots = self._route_slots.get(destination.route)
            if slots is not None:
                slots.recount()  # the route's budget may have grown (a round trip measured)

    def _defer_if_dead(self, destination: Destination, job: DeliveryJob) -> list[Outcome] | None:
        """Deferred outcomes when the destination is in backoff, else None."""
        dead = self._dead.get(destination)
        now = self._clock.now()
        if dead is None or dead.until <= now:
            return None
        return [deferred(r.recipient_id, dead.status, dead.reason, retry_after=dead.until - now)
                for r in job.recipients]

    def _note_health(self, destination: Destination, session: AgentSession) -> None:
        """Mark the destination dead or alive after an attempt."""
        if session.destination_failed is None:
            self._dead.pop(destination, None)
            return
        status, reason = session.destination_failed
        failures = self._dead[destination].failures + 1 if destination in self._dead else 1
        until = self._clock.now() + self._backoff.interval(failures)
        self._dead[destination] = _DeadDestination(until, failures, status, reason)


class _RouteSlots:
    """Connections in use on one route, against a limit asked again each time.

    The limit can change while workers wait: a route with a `rate` learns
    its round trip from its first connection (usage/budget.py).
    """

    def __init__(self, limit: Callable[[], int]):
        self._limit = limit
        self._busy = 0
        self._changed = asyncio.Event()

    async def __aenter__(self) -> None:
        while self._busy >= max(self._limit(), 1):
            self._changed.clear()
            # Woken when a slot frees; and every RECOUNT_SECONDS anyway, since the
            # limit also grows without a slot freeing (a round trip measured).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), RECOUNT_SECONDS)
        self._busy += 1

    async def __aexit__(self, *exc: object) -> None:
        self._busy -= 1
        self._changed.set()

    def recount(self) -> None:
        """Let waiting workers look at the limit again."""
        self._changed.set()


def _may_start(running: list[tuple[asyncio.Task[None], Overlap]], depth: int) -> bool:
    """True when another job may join those in flight on a session of `depth`."""
    if not running:
        return True
    return 0 < depth and len(running) < depth + 2 and all(o.ready for _, o in running)
