"""The queue manager: joins queue, scheduler and delivery agents (Postfix qmgr).

Daemon mode (`run`): at start, leases of dead runners are returned to the
queue, route holds are loaded and every queued recipient is inserted into the
scheduler.  Then, forever: ask the scheduler for due recipients, claim them
in the queue (the claim, not the scheduler, decides who delivers), group
them into jobs by message and destination, hand the jobs to the dispatcher,
and record each job's outcomes.  When nothing is due, wait for a wake-up
(a new submission, a release, a control command) or a timer; the timer also
picks up mail queued by other processes, and recipients that `tidepost
queue release/requeue` made due (the queue's change log), since a wake-up
is only a hint.  Recipients an admin holds are HELD in the queue: the
scheduler may still propose them, and the claim refuses them.

Flush mode (`flush`): one pass over every queued recipient, ignoring retry
times but not holds, as `sendmail -q` does; used by `tidepost flush`, which
may run beside the daemon.

Config keys read: queue.poll_interval, delivery.max_concurrency,
delivery.destination_concurrency, route.*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from dataclasses import dataclass
from typing import Callable

from tidepost.address import domain_matches
from tidepost.clock import Clock
from tidepost.config.schema import Config
from tidepost.delivery.agent import AgentSession, DeliveryAgent
from tidepost.errors import QueueError
from tidepost.eventlog import event
from tidepost.eventloop import Flag, running_loop
from tidepost.manager.caps import CapKeeper
from tidepost.manager.dispatch import Dispatcher
from tidepost.manager.gates import RouteGates
from tidepost.manager.hangup import DrainWatch
from tidepost.manager.notices import Notices, SizeNotices
from tidepost.manager.route_states import RouteStates
from tidepost.manager.watch import QueueWatch
from tidepost.manager.settle import Settlement, add_dsns, needs_dsn, settle
from tidepost.model import DeliveryJob, MessageInfo, QueuedRecipient, ScheduleEntry
from tidepost.outcomes import Outcome, Verdict, deferred
from tidepost.queue.backend import NOTICE_RECONNECTED, ClaimResult, QueueBackend
from tidepost.queue.owner import runner_alive
from tidepost.routing.routes import LOCAL_ROUTE, Destination, Router
from tidepost.scheduler.backoff import Backoff
from tidepost.scheduler.ramqueue import Batch, RamQueue
from tidepost.usage.budget import RouteBudgets
from tidepost.usage.meter import LinkMeter

log = logging.getLogger("tidepost.manager")

CAUSE_MEMORY = 120.0     # seconds a release or flush explains the attempts that follow
LEASE_SECONDS = 3600.0   # longer than any single delivery; dead runners are detected sooner
CLAIM_RETRY = 2.0        # seconds before recipients whose claim failed (store away) are tried
OUTAGE_LOG_EVERY = 60.0  # seconds between log lines about one outage of the queue store
IN_FLIGHT_PER_SLOT = 20  # claimed recipients per delivery slot, to keep claims ahead of work
BEHIND_PER_SLOT = 5      # recipients in flight per slot past which intake is paced
# Transfer keys (exactly-once receipt) outlive queue.lifetime by this much: a
# sender's last retry comes up to its own lifetime after the first attempt.
TRANSFER_MARGIN = 86400.0
TRANSFER_SWEEP = 3600.0  # how often old transfer keys are dropped


@dataclass
class FlushReport:
    """What one flush pass did."""

    attempted: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    held: int = 0


class Manager(RouteStates):
    """Schedules, claims, dispatches and records deliveries (route states: route_states.py)."""

    def __init__(self, config: Config, queue: QueueBackend, router: Router,
                 agents: dict[str, DeliveryAgent], clock: Clock, owner: str,
                 meter: LinkMeter | None = None):
        self._config = config
        self._queue = queue
        self._router = router
        self._agents = agents
        self._clock = clock
        self._owner = owner
        self.meter = meter
        self.budgets = RouteBudgets(router.by_name, meter)
        self.notices = Notices(config.hostname, clock.now)
        self.caps = CapKeeper(config.route, meter, clock, queue, self.notices, self._capped)
        self.size_notices = SizeNotices(router, queue, self.notices, self._waits)
        self.drains = DrainWatch(config.route, clock, config.spool_path / "control")
        self._backoff = Backoff.from_config(config.queue)
        self.scheduler = RamQueue(lambda entry: router.route_of(entry.domain, entry.size))
        self._wake = Flag()  # an asyncio.Event, minus a getpid() per wait
        self._in_flight: set[int] = set()
        # Delay warnings this daemon sent: message id -> the recipients named.
        self._warned: dict[int, set[int]] = {}
        # Outcomes the store could not take (its database away): recorded again
        # by the poller once it can, the recipients staying leased meanwhile.
        self._unrecorded: list[tuple[DeliveryJob, list[Outcome]]] = []
        self._outage_logged = 0.0
        self._watch = QueueWatch(queue)  # new mail from other processes and nodes
        self._transfers_swept = float("-inf")  # when old transfer keys were last dropped
        self._last_change = 0  # the queue's change log, read up to here
        self._daemon = False
        self._loaded = False  # the daemon has read the hold states
        self._ready = asyncio.Event()  # set once the daemon's scheduler holds the queue
        # Set by the node before its listeners open: `run` is coming, so an
        # ETRN that arrives first waits for the queue to be read.
        self.serving = False
        self._report = FlushReport()
        self._dispatcher: Dispatcher | None = None
        self._route_cause: dict[str, tuple[float, str]] = {}
        self.gates = RouteGates(config.route, clock.now())
        self._operator_held: set[str] = set()
        self.on_result: Callable[[int, int], None] = lambda done, total: None
        # Called with 1 for each job recorded: intake pacing (submission/inflow.py).
        self.on_recorded: Callable[[int], None] = lambda jobs: None
        self.runner = "daemon"  # who makes the attempts, for the log: daemon, flush...
        # Called after a release and after each scheduled or batched run of a
        # route (node_relay.py: ETRN to the route's upstreams).
        self.on_release: Callable[[str, str], None] = lambda route, cause: None

    @property
    def owner(self) -> str:
        """This runner's lease owner string."""
        return self._owner

    # -- wiring -------------------------------------------------------------

    def _open_dispatcher(self, tasks: asyncio.TaskGroup) -> Dispatcher:
        """Build the dispatcher that owns delivery workers in `tasks`."""
        delivery = self._config.delivery
        self._dispatcher = Dispatcher(
            tasks, self._clock, self._backoff, self._open_session, self._concurrency_of,
            self._queue.load_body, self._record_or_keep, delivery.max_concurrency,
            self.budgets.limit, admit=self.caps.admit)
        return self._dispatcher

    def _open_session(self, destination: Destination) -> AgentSession:
        """A session of the agent serving `destination`'s route."""
        if destination.route == LOCAL_ROUTE:
            return self._agents[LOCAL_ROUTE].session(None, "")
        route = self._router.by_name[destination.route]
        return self._agents["smtp"].session(route, destination.nexthop)

    def _concurrency_of(self, destination: Destination) -> int:
        """Parallel workers allowed for `destination`."""
        route = self._router.by_name.get(destination.route)
        if route is not None and route.concurrency:
            return route.concurrency
        return self._config.delivery.destination_concurrency

    # -- entry points -------------------------------------------------------

    def queued(self, entries: list[ScheduleEntry]) -> None:
        """Submission callback: new recipients are in the queue."""
        if self._daemon:
            now = self._clock.now()
            for entry in entries:
                self.scheduler.insert(entry, now)
            self._wake.set()
        self.size_notices.queued(entries)

    def wake(self) -> None:
        """Look at the queue now rather than at the next timer."""
        self._wake.set()

    async def catch_up(self) -> int:
        """Take in what other processes committed and an admin made due, then wake.

        Mail other processes committed (sendmail, another node), and
        recipients `tidepost queue release/requeue` made due (the change
        log).  Called before every release, scheduled run and ETRN/ATRN, so
        that they cover every message committed before them, whoever queued
        it, and when `tidepost sendmail` or an admin command says it has
        changed the queue.  Returns how many recipients were taken in.
        """
        taken = 0
        if self._daemon:
            before = len(self.scheduler)
            await self._poll_new()
            changed = await self._poll_changes()
            taken = len(self.scheduler) - before + changed
        self._wake.set()
        return taken

    async def run(self, stopping: asyncio.Event) -> None:
        """Daemon loop until `stopping` is set; in-flight jobs finish first."""
        self._daemon = True
        await self._load()
        async with asyncio.TaskGroup() as tasks:
            dispatcher = self._open_dispatcher(tasks)
            poller = tasks.create_task(self._poll_forever(stopping))
            gate_keeper = tasks.create_task(self._run_gates(stopping))
            cap_keeper = tasks.create_task(self.caps.run(stopping, self._parked_on,
                                                         self._send_anyway))
            drain_watch = tasks.create_task(self.drains.run(stopping))
            stop_watch = tasks.create_task(self._wake_at_stop(stopping))
            while not stopping.is_set():
                await self._schedule_once()
            stop_watch.cancel()
            poller.cancel()
            gate_keeper.cancel()
            cap_keeper.cancel()
            drain_watch.cancel()
            await dispatcher.wait_idle()
        await self._queue.release_claims(self._owner)

    async def flush(self, wanted: Callable[[ScheduleEntry, str], bool]) -> FlushReport:
        """One pass over the queue now, skipping held routes; returns counts."""
        self._report = FlushReport()
        await self._queue.recover_orphans(runner_alive, self._clock.now())
        await self.caps.load()  # the dispatcher then holds back what a cap stops
        held = await self.held_routes()
        entries = [e for e in await self._queue.walk()
                   if wanted(e, self._router.route_of(e.domain, e.size) or "")]
        runnable = [e for e in entries if self._router.route_of(e.domain, e.size) not in held]
        self._report.held = len(entries) - len(runnable)
        self._report.attempted = len(runnable)
        async with asyncio.TaskGroup() as tasks:
            dispatcher = self._open_dispatcher(tasks)
            keeper = tasks.create_task(self.caps.run(asyncio.Event(), lambda route: [],
                                                     self._send_anyway))  # caps reached now
            for start in range(0, len(runnable), 500):
                await self._claim_and_dispatch(runnable[start:start + 500], force=True,
                                               cause="flush command")
            await dispatcher.wait_idle()
            keeper.cancel()
        return self._report

    async def flush_domain(self, route: str, domain: str, subdomains: bool) -> int:
        """Deliver now what `route` holds for `domain` (ETRN, ATRN); returns the count.

        The route stays held: mail arriving later waits for the next request,
        and recipients deferred by this run are parked again (RFC 1985).
        A repeated request while a run is going finds the claimed recipients
        gone from the scheduler, so nothing is delivered twice.
        """
        pattern = "." + domain if subdomains else domain
        await self._until_loaded()
        await self.catch_up()
        entries = self._take_held(route, [pattern])
        count = 0
        if entries and self._dispatcher is not None:
            count = await self._claim_and_dispatch(entries, force=True,
                                                   cause=f"flush of {pattern}")
        log.info("flush of %s on route %s: %d recipients", pattern, route, count)
        return count

    async def deliver_held(self, route: str, patterns: list[str], session: AgentSession,
                           cause: str) -> int:
        """Deliver what `route` holds for `patterns` over `session` (ODMR); the count.

        The session is a connection the customer opened (RFC 2645 ATRN), so
        jobs run on it instead of through the dispatcher: one after another,
        or up to `session.depth` at once on a batch stream (XTIDEPOST BATCH).
        Claims make a concurrent ETRN or flush skip these recipients.
        """
        await self._until_loaded()
        await self.catch_up()
        result = await self._claim(self._take_held(route, patterns), force=True)
        room = asyncio.Semaphore(max(session.depth, 1))

        async def deliver(message: MessageInfo, recipients: list[QueuedRecipient]) -> None:
            job = DeliveryJob(message, recipients, route, "", cause=cause)
            try:
                job.body = await self._queue.load_body(message.message_id)
                outcomes = await session.deliver(job)
            except Exception as exc:  # noqa: BLE001 - the claim must end in an outcome
                outcomes = [deferred(r.recipient_id, "4.3.0", f"delivery failed: {exc}")
                            for r in recipients]
            finally:
                room.release()
            await self._record_or_keep(job, outcomes)

        async with asyncio.TaskGroup() as tasks:
            for message, recipients in result.claimed:
                await room.acquire()
                tasks.create_task(deliver(message, recipients))
        count = sum(len(recipients) for _, recipients in result.claimed)
        log.info("%s on route %s: %d recipients", cause, route, count)
        return count

    # -- daemon internals ---------------------------------------------------

    async def _until_loaded(self) -> None:
        """Wait for the daemon's first read of the queue (an ETRN right after start).

        The SMTP port opens before the queue is loaded: an ETRN answered from
        an empty scheduler would start nothing for mail that is held.
        """
        if self._daemon or self.serving:
            await self._ready.wait()

    async def _load(self) -> None:
        """Recover dead runners' leases, apply holds, fill the scheduler."""
        now = self._clock.now()
        recovered = await self._queue.recover_orphans(runner_alive, now)
        if recovered:
            log.warning("returned %d recipients of dead queue runners to the queue", recovered)
        states = await self._queue.holds()
        for route in self._config.route:
            if route.name not in states and route.start_held:
                await self._queue.set_hold(route.name, True, now, "start_held")
        self._operator_held = await self.held_routes()
        for route in self._operator_held | set(self.gates.routes()):
            self.scheduler.hold(route)
        await self.caps.load()
        # Before the walk: a change made meanwhile is then read twice, never missed.
        self._last_change = (await self._queue.changes_since(0)).latest
        entries = await self._watch.everything()
        now = self._clock.now()
        for entry in entries:
            self.scheduler.insert(entry, now)
        self._loaded = True
        self._ready.set()
        # The entries just read live as long as their mail waits (a relay may
        # hold 1,000,000): out of the cyclic collector's sight, whose full
        # passes over them otherwise stall the daemon for seconds.
        gc.freeze()
        log.info("queue loaded: %d recipients", len(entries))

    def _room(self) -> int:
        """Recipients that may still be claimed before the delivery slots are full."""
        return self._config.delivery.max_concurrency * IN_FLIGHT_PER_SLOT - len(self._in_flight)

    def behind(self) -> bool:
        """True while delivery is behind intake: more in flight than the slots keep
        busy (BEHIND_PER_SLOT a slot), or every slot full and due mail waiting."""
        if not self._daemon:
            return False
        slots = self._config.delivery.max_concurrency
        return len(self._in_flight) >= slots * BEHIND_PER_SLOT or (
            self._room() <= 0 and self.scheduler.has_due(self._clock.now()))

    async def _schedule_once(self) -> None:
        """Dispatch what is due, or sleep until something may be."""
        room = self._room()
        decision = self.scheduler.next_batch(self._clock.now(), room) if room > 0 else None
        if isinstance(decision, Batch):
            await self._claim_and_dispatch(decision.entries, force=False)
            return
        timeout = self._config.queue.poll_interval
        if decision is not None and decision.seconds is not None:
            timeout = min(timeout, max(decision.seconds, 0.0))
        # One timer and one wait, no tasks: this runs after every submission
        # (stopping also sets _wake: _wake_at_stop).
        self._wake.clear()
        alarm = running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            alarm.cancel()

    async def _wake_at_stop(self, stopping: asyncio.Event) -> None:
        """Wake the schedule loop when the daemon stops, so that it sees it."""
        await stopping.wait()
        self._wake.set()

    async def _run_gates(self, stopping: asyncio.Event) -> None:
        """Run gated routes when their schedule or batching rule says so."""
        while not stopping.is_set() and self.gates.routes():
            for route, cause in self.gates.due(self._clock.now(), self._waiting):
                if route not in self._operator_held:
                    await self._run_gated(route, cause)
            wake = self.gates.next_wake()
            pause = self._config.queue.poll_interval
            if wake is not None:
                pause = min(pause, max(wake - self._clock.now(), 0.0))
            await asyncio.sleep(pause)

    async def _run_gated(self, route: str, cause: str) -> int:
        """One run of a gated route: everything due on it, now."""
        await self.catch_up()
        entries = self.scheduler.take_route(route, self._clock.now())
        if entries and self._dispatcher is not None:
            await self._claim_and_dispatch(entries, force=False, cause=cause)
        log.info("run of route %s (%s): %d recipients", route, cause, len(entries))
        self.drains.started(route, f"run ({cause})")
        self.on_release(route, cause)  # a run is when the upstream is asked (ETRN) too
        return len(entries)

    def _waiting(self, route: str) -> tuple[int, float]:
        """Recipients waiting on `route` and how long the longest has waited."""
        entries = self.scheduler.entries_of_route(route)
        oldest = min((e.next_try for e in entries), default=self._clock.now())
        return len(entries), self._clock.now() - oldest

    async def _poll_forever(self, stopping: asyncio.Event) -> None:
        """Pick up mail queued, and leases left, by other processes, every poll interval."""
        await self._watch.listen()
        failing = False
        while not stopping.is_set():
            heard = await self._watch.wait(self._config.queue.poll_interval)
            # Back from an outage of the store's notices: some were missed.
            everything = not heard or NOTICE_RECONNECTED in heard
            try:
                await self._record_kept()  # first: before any lease is taken back
                await self._poll_new()
                if everything or heard & {"changes", "holds"}:
                    await self._poll_changes()
                if "holds" in heard or NOTICE_RECONNECTED in heard:
                    await self.follow_holds()
                if everything:  # on the timer only: notices come with every commit elsewhere
                    await self._recover_orphans()
                    await self._forget_old_transfers()
            except QueueError as exc:  # the database is away: once per outage, not per poll
                if not failing:
                    log.warning("polling the queue failed; retrying every %.1f s: %s",
                                self._config.queue.poll_interval, exc)
                failing = True
                continue
            except Exception:  # noqa: BLE001 - polling must go on
                log.exception("polling the queue failed")
                continue
            if failing:
                log.warning("polling the queue works again")
                failing = False

    async def _forget_old_transfers(self) -> None:
        """Drop transfer keys past the message lifetime and its margin (hourly)."""
        now = self._clock.now()
        if now - self._transfers_swept < TRANSFER_SWEEP:
            return
        self._transfers_swept = now
        await self._queue.forget_transfers(now - self._config.queue.lifetime - TRANSFER_MARGIN)

    async def _recover_orphans(self) -> None:
        """Take back recipients leased by a runner that died (a killed `tidepost flush`)."""
        recovered = await self._queue.recover_orphans(runner_alive, self._clock.now())
        if recovered:
            log.warning("returned %d recipients of a dead queue runner to the queue", recovered)
            await self._poll_new(since=0)

    async def _poll_new(self, since: int | None = None) -> None:
        """Insert QUEUED recipients the scheduler has not seen yet (since=0: look at all)."""
        entries = await (self._watch.news() if since is None else self._watch.everything())
        fresh = [e for e in entries
                 if e.recipient_id not in self.scheduler and e.recipient_id not in self._in_flight]
        for entry in fresh:
            self.scheduler.insert(entry)
        if fresh:
            self._wake.set()

    async def _poll_changes(self) -> int:
        """Follow what admins changed since the last look: reschedule or forget.

        Released and requeued recipients are rescheduled, and their
        destinations' backoff is forgotten: the admin asked for a try now, as
        `postqueue -f` unthrottles Postfix's dead destinations.  Held and
        deleted ones leave the scheduler (on a held route they would stay in
        memory until its next run).
        """
        changes = await self._queue.changes_since(self._last_change)
        self._last_change = changes.latest
        for recipient_id in changes.gone:
            self.scheduler.remove(recipient_id)
        fresh = [e for e in changes.due if e.recipient_id not in self._in_flight]
        for entry in fresh:
            self.scheduler.insert(entry)  # replaces the entry, with its new next try
            destination = self._router.destination(entry.domain, entry.size)
            if destination is not None and self._dispatcher is not None:
                self._dispatcher.revive(destination)
        if fresh:
            self._wake.set()
        return len(fresh)

    # -- claiming and recording ---------------------------------------------

    def _take_held(self, route: str, patterns: list[str]) -> list[ScheduleEntry]:
        """Remove and return `route`'s entries for domains matching `patterns`."""
        entries = self.scheduler.entries_in_domains(
            route, lambda domain: any(domain_matches(domain, p) for p in patterns))
        for entry in entries:
            self.scheduler.remove(entry.recipient_id)
        return entries

    async def _claim(self, entries: list[ScheduleEntry], force: bool) -> ClaimResult:
        """Claim `entries`; what we now hold counts as in flight until recorded."""
        ids = [e.recipient_id for e in entries]
        # In flight from before the claim, so that the poller, which runs while
        # the claim is awaited, does not put these back into the scheduler.
        self._in_flight.update(ids)
        try:
            result = await self._queue.claim(ids, self._owner, LEASE_SECONDS,
                                             self._clock.now(), force)
        except QueueError as exc:
            self._claim_failed(entries, exc)
            return ClaimResult([], [])
        finally:
            self._in_flight.difference_update(ids)
        for _, recipients in result.claimed:
            self._in_flight.update(r.recipient_id for r in recipients)
        if self._daemon:
            for entry in result.not_due:
                self.scheduler.insert(entry)
        return result

    def _claim_failed(self, entries: list[ScheduleEntry], error: QueueError) -> None:
        """The store could not claim (its database away): the entries wait a little."""
        self._outage(f"claiming failed; {len(entries)} recipients wait {CLAIM_RETRY:.0f} s: "
                     f"{error}")
        if self._daemon:
            later = self._clock.now() + CLAIM_RETRY
            for entry in entries:
                self.scheduler.insert(dataclasses.replace(entry,
                                                          next_try=max(entry.next_try, later)))

    def _outage(self, what: str) -> None:
        """A warning about the store being away, at most once a minute."""
        now = self._clock.now()
        if now - self._outage_logged >= OUTAGE_LOG_EVERY:
            self._outage_logged = now
            log.warning("queue store unavailable: %s", what)

    async def _record_or_keep(self, job: DeliveryJob, outcomes: list[Outcome]) -> None:
        """Record a job's outcomes; if the store is away, keep them for the poller."""
        try:
            await self._record(job, outcomes)
        except QueueError as exc:
            self._unrecorded.append((job, outcomes))
            self._outage(f"recording outcomes failed; {len(self._unrecorded)} jobs kept "
                         f"to record when it is back: {exc}")

    async def _record_kept(self) -> None:
        """Record the outcomes kept during an outage, oldest first (raises while it lasts)."""
        while self._unrecorded:
            job, outcomes = self._unrecorded[0]
            await self._record(job, outcomes)
            self._unrecorded.pop(0)
            log.info("%s: outcomes kept during the queue store's outage recorded",
                     job.message.queue_id)

    async def _claim_and_dispatch(self, entries: list[ScheduleEntry], force: bool,
                                  cause: str = "") -> int:
        """Claim `entries`; turn what we now hold into jobs for the dispatcher; how many.

        The count is what this claim got, not `len(entries)`: in a cluster the
        scheduler may still list recipients another node has just delivered.
        """
        assert self._dispatcher is not None
        result = await self._claim(entries, force)
        for message, recipients in result.claimed:
            by_destination: dict[Destination | None, list] = {}
            for rcpt in recipients:
                by_destination.setdefault(self._router.destination(rcpt.address.domain,
                                                                   message.size),
                                          []).append(rcpt)
            for destination, group in by_destination.items():
                job = DeliveryJob(message, group, destination.route if destination else "",
                                  destination.nexthop if destination else "",
                                  cause=cause or self._cause_of(destination, group))
                if destination is None:
                    await self._record_or_keep(job, [deferred(r.recipient_id, "4.4.4",
                                                      "no route serves this domain")
                                             for r in group])
                else:
                    self.budgets.note(destination.route, message.size)
                    self._dispatcher.submit(job, destination)
        return sum(len(recipients) for _, recipients in result.claimed)

    def _forget_warned(self, message_id: int, result: Settlement) -> None:
        """Drop warned recipients that are final now, and the message once none is left."""
        named = self._warned.get(message_id)
        if named is None:
            return
        named.difference_update(u.outcome.recipient_id for u in result.updates
                                if u.next_try is None)
        if not named and all(u.next_try is None for u in result.updates):
            del self._warned[message_id]  # ids are not reused, but keep it small

    def _cause_of(self, destination: Destination | None, recipients: list) -> str:
        """Why a scheduled attempt happens: a recent release, a retry, or new mail."""
        recent = self._route_cause.get(destination.route) if destination else None
        if recent and self._clock.now() - recent[0] < CAUSE_MEMORY:
            return recent[1]
        return "retry" if any(r.attempts for r in recipients) else "new mail"

    async def _record(self, job: DeliveryJob, outcomes: list[Outcome]) -> None:
        """Write a job's outcomes, queue its DSNs, reschedule what was deferred."""
        now = self._clock.now()
        message = job.message
        named = self._warned.get(message.message_id)
        result = settle(job, outcomes, self._backoff, now,
                        message.warned and named is None, named or frozenset())
        if needs_dsn(result) and not message.sender.is_null:
            original = job.body or await self._queue.load_body(message.message_id)
            add_dsns(result, job, original, self._config.hostname, now)
        if result.warned:
            self._warned.setdefault(message.message_id, set()).update(
                f.recipient.recipient_id for f in result.delays)
        recorded = await self._queue.record(
            self._owner, result.updates, result.dsns,
            [message.message_id] if result.warned else [])
        new_entries = recorded.entries
        for dsn, kind in zip(result.dsns, result.dsn_kinds):
            event(log, message.queue_id, "dsn", kind=kind.lower(), dsn_id=dsn.queue_id,
                  to=f"<{message.sender}>")
        self._forget_warned(message.message_id, result)
        for update in result.updates:
            self._in_flight.discard(update.outcome.recipient_id)
            self._log(job, update.outcome, now)
            self._count(update.outcome.verdict)
            if self._daemon and update.next_try is not None:
                rcpt = next(r for r in job.recipients
                            if r.recipient_id == update.outcome.recipient_id)
                self.scheduler.insert(ScheduleEntry(rcpt.recipient_id, message.message_id,
                                                    rcpt.address.domain, update.next_try,
                                                    message.size))
        for queue_id in recorded.removed:
            event(log, queue_id, "removed")
        for entry in new_entries:
            if self._daemon:
                self.scheduler.insert(entry)
        if new_entries:
            self._wake.set()
        self.on_recorded(1)

    def _count(self, verdict: Verdict) -> None:
        """Tally a verdict for the flush report and progress display."""
        if verdict is Verdict.DELIVERED:
            self._report.delivered += 1
        elif verdict is Verdict.DEFERRED:
            self._report.deferred += 1
        else:
            self._report.bounced += 1
        done = self._report.delivered + self._report.deferred + self._report.bounced
        self.on_result(done, self._report.attempted)

    def _log(self, job: DeliveryJob, outcome: Outcome, now: float) -> None:
        """One log line per recipient attempt (docs/LOGGING.md)."""
        rcpt = next(r for r in job.recipients if r.recipient_id == outcome.recipient_id)
        runner = self.runner
        if job.cause.startswith(("ETRN", "flush of")):
            runner = "etrn"
        elif job.cause.startswith("ATRN"):
            runner = "atrn"
        event(log, job.message.queue_id, outcome.verdict.value, to=f"<{rcpt.address}>",
              route=job.route or "none", relay=outcome.remote_mta or job.nexthop or "local",
              delay=f"{now - job.message.arrival:.2f}",
              attempts=rcpt.attempts + int(outcome.attempted), runner=runner,
              status=outcome.status, reply=outcome.reason)
