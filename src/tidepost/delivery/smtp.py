"""The SMTP delivery agent: mail for remote domains, to MX hosts or a smarthost.

`SmtpAgent.session(route, nexthop)` gives an `SmtpAgentSession` for one
destination.  Transport "mx": `nexthop` is the recipient domain, looked up
in DNS (smtp_client/mx.py) and dialled on [delivery] smtp_port.  Transport
"smarthost": `nexthop` is "host[:port]" or "[host]:port" (port 25 by
default); lookup failures for a smarthost are never permanent, because a
typo in our configuration must not bounce mail (as Postfix does).

The session connects lazily on its first job, tries at most max_mx_hosts
hosts (every address of each, IPv6 first) and keeps the connection for later
jobs: a job after a completed transaction starts with MAIL FROM.  A job's
recipients are split into transactions of recipients_per_transaction.

Backup MX: recipients that a host's 4xx reply deferred (greylisting, a
full or busy server) are tried once more, in the same job, at the next
host that gives a session, as Postfix does; 5xx replies and lost
connections are not.

Destination failure: when no host gives a usable session, every recipient
is Deferred 4.4.1 with the last error, and `destination_failed` is set to
that (status, reason) so the manager defers the destination's other jobs.
A permanent DNS result (null MX, NXDOMAIN) bounces every recipient instead.
`deliver()` never raises; an unexpected exception defers the job with 4.3.0.

On-demand routes (defence in depth; the manager never dispatches a held
route): before every DNS query that misses the cache and before every TCP
connection, `is_held(route)` is asked; a held route raises `RouteHeld`, and
the job is deferred 4.4.0 without marking the destination failed, so its
backoff is untouched.  Each query and connection that does go out is noted
in the link ledger with the job's queue id and cause.  Dial delay: when the
first dial of a session on an on-demand route fails at TCP level (refused,
unreachable, timed out) at every address, the session waits the route's
`dial_delay` and dials once more, so that a dial-on-demand link has time to
come up (sendmail's DialDelay, but never on always-up routes).  Every
session's first dial is treated so: the agent cannot tell whether the link
went idle since the last one.

Overlap: jobs of one session pipeline on its connection (smtp_client/
pipeline.py) up to [delivery] pipeline_depth; `depth` tells the dispatcher.
Batches: to a peer offering XTIDEPOST BATCH (another tidepost) on a route
with `tidepost_batch`, jobs go on the connection's batch stream instead
(delivery/batching.py), overlapping batching.DEPTH deep.
Accounting: each connection opened and closed, the bytes it carried after
every transaction (the kernel's TCP counts where there are some), each
message whose content went out and its sender, and the connection's lowest
round trip go to the link meter (usage/meter.py) under the route's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence

from tidepost.clock import Clock
from tidepost.config.schema import CUSTOMERS_ROUTE, DeliveryConfig, RouteConfig
from tidepost.delivery.agent import Overlap
from tidepost.delivery.batching import DEPTH as BATCH_DEPTH
from tidepost.delivery.batching import BatchChannel, SharedBatches
from tidepost.errors import ConnectFailed, DeliveryError, PermFailure, RouteHeld, TempFailure
from tidepost.model import DeliveryJob, QueuedRecipient
from tidepost.outcomes import Outcome, Verdict, bounced, deferred, not_attempted
from tidepost.resolver.resolver import Lookups
from tidepost.routing.ledger import Ledger
from tidepost.smtp_client.loops import OwnEndpoints
from tidepost.smtp_client.mx import (MxResolver, NextHop, Target, host_hops, next_hops,
                                     parse_smarthost)
from tidepost.smtp_client.session import Peer, SmtpSession, open_session
from tidepost.smtp_client.transaction import (Transaction, TransactionResult, message_transaction,
                                              run_transaction)
from tidepost.submission.transfers import transfer_id
from tidepost.usage.meter import LinkMeter

log = logging.getLogger("tidepost.delivery.smtp")


class SmtpAgent:
    """Makes SMTP sessions, one per destination (route + next hop)."""

    def __init__(self, delivery_config: DeliveryConfig, resolver: MxResolver,
                 helo_name: str, clock: Clock, *, rng: random.Random | None = None,
                 is_held: Callable[[str], bool] | None = None,
                 ledger: Ledger | None = None, meter: LinkMeter | None = None,
                 own_endpoints: OwnEndpoints | None = None):
        self.config = delivery_config
        # With is_held or a ledger, the resolver must be a resolver.Lookups
        # (it is given a per-session guard); test fakes need only mx/addresses.
        self.resolver = resolver
        self.helo_name = helo_name
        self.clock = clock  # for dial delays
        self.rng = rng or random.Random()
        self.is_held = is_held
        self.ledger = ledger
        self.meter = meter  # link accounting: bytes, connections, round trips per route
        self.own_endpoints = own_endpoints  # our listeners: a next hop there is a loop
        self.batches = SharedBatches()  # one connection per tidepost peer, for all workers

    def session(self, route: RouteConfig | None, nexthop: str) -> SmtpAgentSession:
        """A not yet connected session for `nexthop` on `route`."""
        if route is not None and route.transport == "smarthost":
            return SmtpAgentSession(self, parse_smarthost(nexthop, 25), smarthost=True,
                                    route=route)
        return SmtpAgentSession(self, Target(nexthop, self.config.smtp_port, True),
                                smarthost=False, route=route)


class SmtpAgentSession:
    """Delivers successive jobs to one destination over one reused connection."""

    def __init__(self, agent: SmtpAgent, target: Target, *, smarthost: bool,
                 route: RouteConfig | None = None):
        self.agent = agent
        self.target = target
        self.smarthost = smarthost
        self.route = route
        self.destination_failed: tuple[str, str] | None = None
        self._job: DeliveryJob | None = None  # the job being delivered, for the ledger
        self._resolver = self._guarded_resolver()
        self._hops: list[NextHop] | None = None
        self._permanent: PermFailure | None = None
        self._smtp: SmtpSession | None = None
        self._connections = 0
        self._transactions = 0
        self._dialling = asyncio.Lock()
        self._batch = BatchChannel(agent.config, agent.helo_name,
                                   route is None or route.tidepost_batch)

    def statistics(self) -> dict[str, int]:
        """Connections opened and transactions completed by this session."""
        return {"connections": self._connections, "transactions": self._transactions}

    @property
    def depth(self) -> int:
        """Jobs that may overlap on the connection: pipeline_depth with PIPELINING, else 0."""
        smtp = self._smtp
        if smtp is None or not _usable(smtp):
            return 0
        if self._batch.usable(smtp):
            return BATCH_DEPTH
        return self.agent.config.pipeline_depth if smtp.supports("PIPELINING") else 0

    async def deliver(self, job: DeliveryJob, overlap: Overlap | None = None) -> list[Outcome]:
        """Deliver one job; one outcome per recipient; never raises."""
        try:
            return await self._deliver(job, overlap or Overlap())
        except Exception as error:  # habit 7: an agent returns outcomes, always
            log.exception("SMTP delivery to %s failed unexpectedly", self.target.host)
            if self._smtp is not None:
                self._smtp.close()
            return _defer_all(job.recipients, "4.3.0", f"internal error: {error!r}")

    async def close(self) -> None:
        """Say QUIT and drop the connection, if one is open; never raises."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None and not self.agent.batches.leave(self._key(), smtp):
            return  # other sessions still send on this shared batch connection
        await self._batch.close()
        if smtp is not None:
            try:
                await smtp.quit()
            except Exception:
                smtp.close()

    async def _deliver(self, job: DeliveryJob, overlap: Overlap) -> list[Outcome]:
        """Connect if needed, then send the job in transactions of bounded size."""
        if self.destination_failed is not None:
            return _defer_all(job.recipients, *self.destination_failed)
        self._job = job
        try:
            self._check_held()  # also stops a kept connection carrying more jobs
            smtp = await self._connection()
        except RouteHeld as held:  # not a destination failure, not an attempt: no backoff
            return [not_attempted(r.recipient_id, held.status, held.reason)
                    for r in job.recipients]
        except PermFailure as failure:
            return [bounced(r.recipient_id, failure.status, failure.reason)
                    for r in job.recipients]
        except TempFailure as failure:
            self.destination_failed = (failure.status, failure.reason)
            return _defer_all(job.recipients, failure.status, failure.reason)
        return await self._send_job(smtp, job, overlap)

    async def _send_job(self, smtp: SmtpSession, job: DeliveryJob,
                        overlap: Overlap) -> list[Outcome]:
        """Run one transaction per slice of recipients on the open connection.

        Only the job's first transaction waits for the gate, and the job is
        ready for a follower once its last transaction has its turn.
        """
        outcomes: list[Outcome] = []
        size = self.agent.config.recipients_per_transaction
        for start in range(0, len(job.recipients), size):
            chunk = job.recipients[start:start + size]
            if smtp.broken:
                outcomes += _defer_all(chunk, "4.4.2", f"connection with {smtp.peer} "
                                       "was lost earlier in this delivery", smtp.peer.host)
                continue
            last = start + size >= len(job.recipients)
            sender = self._batch.sender(smtp)
            if sender is not None:  # a tidepost peer: the batch stream, no gate needed
                sent, result = await self._batch.send(sender, job, chunk,
                                                      overlap.mark_ready if last else None)
                self._account(smtp, sent, result)
                outcomes += result.outcomes
                continue
            transaction = message_transaction(job.message, chunk, job.body, transfer_id(
                job.message.queue_id, job.message.arrival))
            gate = overlap.gate if start == 0 else None
            chunk_outcomes, smtp = await self._transact(
                smtp, transaction, first_of_job=start == 0, gate=gate,
                on_turn=overlap.mark_ready if last else None)
            outcomes += await self._fall_back(smtp, transaction, chunk_outcomes, gate)
        return outcomes

    async def _transact(self, smtp: SmtpSession, transaction: Transaction, *,
                        first_of_job: bool, gate: asyncio.Event | None = None,
                        on_turn: Callable[[], None] | None = None
                        ) -> tuple[list[Outcome], SmtpSession]:
        """One transaction; redone once on a new connection if a used one had gone bad.

        A server may drop a connection we kept between jobs (idle timeout,
        often with a 421), or drop it while an earlier transaction pipelined
        ahead of this one was under way.  If the first transaction of a job
        on a connection that had carried others got no reply at all, the
        server never took its message, so it is safe to dial again and repeat it.
        """
        stale = first_of_job and (smtp.transactions > 0 or smtp.pipeline.turns > 0)
        stream = self.agent.config.pipeline_depth >= 2
        result = await run_transaction(smtp, transaction, gate=gate, on_turn=on_turn,
                                       stream=stream)
        self._account(smtp, transaction, result)
        if not (stale and smtp.broken and not result.replied):
            return result.outcomes, smtp
        try:
            smtp = await self._connection()
        except DeliveryError:
            return result.outcomes, smtp
        result = await run_transaction(smtp, transaction, gate=gate, on_turn=on_turn,
                                       stream=stream)
        self._account(smtp, transaction, result)
        return result.outcomes, smtp

    async def _fall_back(self, smtp: SmtpSession, transaction: Transaction,
                         outcomes: list[Outcome], gate: asyncio.Event | None) -> list[Outcome]:
        """Recipients a 4xx reply deferred: once more at the next MX host that answers.

        As Postfix does (a soft error keeps the recipient for the next server
        unless this was the last): a greylisting or busy primary lets a
        backup MX take the mail.  The backup gets its own connection for this
        transaction only; the primary's stays for the next jobs.
        """
        soft = {o.recipient_id for o in outcomes if o.verdict is Verdict.DEFERRED
                and o.diagnostic.startswith("4")}
        later = self._hosts_after(smtp.peer.host)
        if not soft or not later:
            return outcomes
        retry = dataclasses.replace(transaction, recipients=[
            r for r in transaction.recipients if r.recipient_id in soft])
        try:
            backup = await self._dial_hosts(later)
        except DeliveryError:
            return outcomes
        self._connections += 1
        try:
            result = await run_transaction(backup, retry, gate=gate)
            self._account(backup, retry, result)
        finally:
            try:
                await backup.quit()
            except Exception:
                backup.close()
        again = {o.recipient_id: o for o in result.outcomes}
        return [again.get(o.recipient_id, o) for o in outcomes]

    def _hosts_after(self, host: str) -> list[NextHop]:
        """The next hops less preferred than `host` (none if it is the last)."""
        hops = self._hops or []
        names = [hop.host for hop in hops]
        return hops[names.index(host) + 1:] if host in names else []

    async def _connection(self) -> SmtpSession:
        """The open connection, or a new one to the first host that answers.

        Overlapping jobs ask at once; the lock makes them share one dial.
        """
        async with self._dialling:
            if self._smtp is not None and _usable(self._smtp):
                return self._smtp
            if self._smtp is not None:
                self.agent.batches.leave(self._key(), self._smtp)
                self._smtp.close()
                self._smtp = None
            async with self.agent.batches.first_dial(self._key()):
                joined = self.agent.batches.join(self._key()) if self._batch.enabled else None
                if joined is not None:
                    self._smtp, self._batch = joined
                    return self._smtp
                hops = await self._next_hops()
                self._smtp = await self._dial(hops)
                self._connections += 1
                if self._batch.enabled:
                    self.agent.batches.found(self._key(), self._smtp, self._batch)
            return self._smtp

    def _key(self) -> tuple[str, ...]:
        """The destination, as shared batch connections know it."""
        return (self.route.name if self.route else "", self.target.host,
                str(self.target.port))

    async def _next_hops(self) -> list[NextHop]:
        """Resolve the destination once per session; a permanent answer sticks."""
        if self._permanent is not None:
            raise self._permanent
        if self._hops is None:
            try:
                self._hops = await self._resolve()
            except PermFailure as failure:
                if self.smarthost:
                    raise TempFailure("4.4.3", f"smarthost {self.target.host}: "
                                      f"{failure.reason}") from None
                self._permanent = failure
                raise
        return self._hops

    async def _resolve(self) -> list[NextHop]:
        """MX routing for a domain or smarthost name; plain addresses for [host]."""
        config, target, own = self.agent.config, self.target, self.agent.own_endpoints
        ours = own.ours(target.port) if own is not None else None
        if not target.mx_lookup:
            return await host_hops(self._resolver, target.host, ours)
        return await next_hops(self._resolver, target.host, config.max_mx_hosts,
                               self.agent.rng, ours)

    async def _dial(self, hops: Sequence[NextHop]) -> SmtpSession:
        """Dial the hosts; on an on-demand route's first dial, once more after dial_delay."""
        try:
            return await self._dial_hosts(hops)
        except ConnectFailed as failure:
            delay = self._dial_delay()
            if not delay:
                raise
            log.info("%s; dial delay: dialling again in %gs", failure.reason, delay)
            await self.agent.clock.sleep(delay)
            return await self._dial_hosts(hops)

    async def _dial_hosts(self, hops: Sequence[NextHop]) -> SmtpSession:
        """Open a session with the first host and address that accepts us.

        Raises ConnectFailed when no address took a TCP connection at all,
        TempFailure 4.4.1 when some did but refused or failed the session.
        """
        last: DeliveryError | None = None
        connected = False
        for hop in hops:
            for address in hop.addresses:
                peer = Peer(hop.host, address, self.target.port)
                try:
                    return await open_session(peer, self.agent.helo_name, self.agent.config,
                                              on_connect=self._before_connect,
                                              on_open=self._opened, on_close=self._closed)
                except RouteHeld:
                    raise
                except TempFailure as failure:
                    log.info("%s", failure.reason)
                    connected = connected or not isinstance(failure, ConnectFailed)
                    last = failure
        reason = last.reason if last else f"no host to try for {self.target.host}"
        if last is not None and not connected:
            raise ConnectFailed(reason)
        raise TempFailure("4.4.1", reason)

    def _dial_delay(self) -> float:
        """Seconds to wait before dialling again: on-demand routes, first dial only."""
        route = self.route
        if route is None or not route.on_demand or self._connections:
            return 0.0
        return route.dial_delay

    # -- link accounting (usage/meter.py) ------------------------------------

    def _opened(self, smtp: SmtpSession) -> None:
        """A connection is open: count it, and its round trip for the budget."""
        meter, route = self.agent.meter, self.route
        if meter is not None and route is not None:
            meter.opened(route.name)
            meter.round_trip_measured(route.name, smtp.wire().min_rtt)

    def _closed(self, smtp: SmtpSession) -> None:
        """A connection closes: its last bytes, and the end of its online time."""
        meter, route = self.agent.meter, self.route
        if meter is not None and route is not None:
            self._report_traffic(smtp)
            meter.closed(route.name)

    def _account(self, smtp: SmtpSession, transaction: Transaction,
                 result: TransactionResult) -> None:
        """After a transaction: its bytes so far, and the message if its content went."""
        self._transactions += result.completed
        meter, route = self.agent.meter, self.route
        if meter is None or route is None:
            return
        self._report_traffic(smtp)
        if result.completed:
            accepted = sum(o.verdict is Verdict.DELIVERED for o in result.outcomes)
            sender = "" if route.name == CUSTOMERS_ROUTE else str(transaction.sender)
            meter.delivered(route.name, sender, len(transaction.body), accepted)

    def _report_traffic(self, smtp: SmtpSession) -> None:
        """What the connection carried since its last report."""
        assert self.agent.meter is not None and self.route is not None
        self.agent.meter.traffic(self.route.name, smtp.traffic())

    # -- held routes and the link ledger -----------------------------------

    def _guarded_resolver(self) -> MxResolver:
        """The agent's resolver, guarded for this session's route when it is on demand."""
        agent = self.agent
        on_demand = self.route is not None and self.route.on_demand
        if not on_demand or (agent.is_held is None and agent.ledger is None):
            return agent.resolver
        assert isinstance(agent.resolver, Lookups), "a guard needs a resolver.Lookups"
        return agent.resolver.guarded(self._before_query)

    def _check_held(self) -> None:
        """Raise RouteHeld when this session's on-demand route is held."""
        route, is_held = self.route, self.agent.is_held
        if route is not None and route.on_demand and is_held is not None \
                and is_held(route.name):
            raise RouteHeld(route.name)

    def _before_query(self, name: str, rdtype: str) -> None:
        """Resolver guard: refuse on a held route, else note the query in the ledger."""
        self._note(f"dns {name} {rdtype}")

    def _before_connect(self, peer: Peer) -> None:
        """Connection guard: refuse on a held route, else note the connection."""
        self._note(f"connect {peer}")

    def _note(self, what: str) -> None:
        """Check the hold, then append `what` to the ledger (on-demand routes only)."""
        self._check_held()
        route, ledger, job = self.route, self.agent.ledger, self._job
        if route is not None and route.on_demand and ledger is not None:
            ledger.record(route.name, what, job.message.queue_id if job else "",
                          job.cause if job else "")


def _usable(smtp: SmtpSession) -> bool:
    """True when a kept connection can carry another transaction."""
    return not (smtp.broken or smtp.reader.at_eof() or smtp.writer.is_closing())


def _defer_all(recipients: Sequence[QueuedRecipient], status: str, reason: str,
               remote_mta: str = "") -> list[Outcome]:
    """Deferred outcomes for every recipient."""
    return [deferred(r.recipient_id, status, reason, remote_mta) for r in recipients]
