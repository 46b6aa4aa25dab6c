"""Composition of the relay role: customer domains, ETRN, AUTH, ODMR (node.py's helper).

`RelayRole(parts)` wires the relay verbs of the SMTP server (smtp_server/
turn.py) to the queue manager without either importing the other:
- `conversation(odmr_only)` is the SmtpServer's session factory;
- ETRN calls `flush_domain` → `Manager.flush_domain("customers", ...)`;
- ATRN calls `deliver_over` → `Manager.deliver_held` on the reversed
  connection (delivery/turnaround.py);
- every release of a customer domain is remembered for `tidepost status`
  (routing/releases.py: `SPOOL/customer-releases.json`, in a cluster the
  database, so that every node's status shows every node's releases).
`start()` holds the `customers` route (always, whatever was persisted: customer
mail waits for its customer), opens the ODMR listeners and starts a task that
re-reads the customer domains file at most once a second; `reload()` (SIGHUP)
re-reads it and the credentials file at once.
In a cluster the customer domains and AUTH users of the database
(queue/directory.py) count too: `SharedLists` reads them at start and again
whenever another node's or a command's change is heard (NOTIFY), or its
version moved at a poll (queue.poll_interval, the fallback).  `after_release(route)` sends
ETRN to the route's `etrn` upstreams (the site role).
Config keys read: relay.*, route.*.etrn, route.*.etrn_domains, delivery.*.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
from typing import Any

from tidepost.address import domain_matches
from tidepost.clock import Clock
from tidepost.config.schema import CUSTOMERS_ROUTE, Config
from tidepost.delivery.batching import BatchChannel
from tidepost.delivery.turnaround import TurnedSession
from tidepost.errors import ConfigError, QueueError
from tidepost.manager.manager import Manager
from tidepost.queue.backend import NOTICE_RECONNECTED
from tidepost.queue.directory import CREDENTIALS, CUSTOMERS, CredentialRecord, \
    SharedDirectory, shared_directory
from tidepost.routing.releases import release_book
from tidepost.routing.routes import Router
from tidepost.smtp_client.session import SmtpSession
from tidepost.smtp_client.turn import UpstreamPlan, UpstreamRequests
from tidepost.smtp_server.credentials import Credentials, CredentialsError
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.smtp_server.session import Conversation
from tidepost.smtp_server.cluster_ratelimit import ClusterRateLimiter
from tidepost.smtp_server.ratelimit import RateLimiter
from tidepost.smtp_server.turn import TURN_WINDOW, RelayConversation, RelayServices
from tidepost.submission.submit import Submission

log = logging.getLogger("tidepost.relay")

REFRESH_SECONDS = 1.0  # customer domains file: look at its mtime at most this often


class RelayRole:
    """The relay role's parts of one running node."""

    def __init__(self, config: Config, manager: Manager, router: Router,
                 submission: Submission, clock: Clock, queue: Any = None):
        self.config = config
        self.clock = clock
        self.manager = manager
        self.router = router
        self.submission = submission
        self._file_credentials = _load_credentials(config)
        self.directory = shared_directory(queue)
        self._queue = queue
        # Shared by every listener and updated in place; in a cluster there is
        # always a list (AUTH on), filled from the database at start.
        self.credentials = self._file_credentials if self.directory is None \
            else Credentials.combined([], self._file_credentials)
        self._shared_users: list[CredentialRecord] = []
        self._shared: SharedLists | None = None
        # One budget each: an ETRN burst never refuses the same client's ATRN.
        # In a cluster (a PostgreSQL queue), budgets the nodes share.
        self.etrn_limiter = _limiter(queue, "etrn", config.relay.etrn_rate)
        self.atrn_limiter = _limiter(queue, "atrn", config.relay.atrn_rate)
        self._budgets: list[asyncio.Task] = []
        self.upstreams = UpstreamRequests(config.hostname, config.delivery, manager.meter)
        self._servers: list[SmtpServer] = []
        self._watcher: asyncio.Task[None] | None = None
        self.releases = release_book(config, self.directory)

    @property
    def active(self) -> bool:
        """True when this node answers ETRN/AUTH/ATRN (customers or AUTH users)."""
        return self.config.has_customers or bool(self.config.relay.credentials_file)

    def services(self, odmr_only: bool = False) -> RelayServices:
        """What the relay verbs of one listener get."""
        delivery = self.config.delivery
        return RelayServices(
            flush_domain=self.flush_domain, is_customer=self.router.is_customer,
            etrn_limiter=self.etrn_limiter, atrn_limiter=self.atrn_limiter,
            credentials=self.credentials,
            etrn_networks=tuple(ipaddress.ip_network(n, strict=False)
                                for n in self.config.relay.etrn_networks),
            pending=self.pending, deliver_over=self.deliver_over,
            greeting_timeout=delivery.connect_timeout,
            command_timeout=delivery.command_timeout, odmr_only=odmr_only)

    def conversation(self, odmr_only: bool = False) -> Any:
        """The SmtpServer session factory: with the relay verbs when the role is on."""
        if not self.active:
            return Conversation
        return functools.partial(RelayConversation, relay=self.services(odmr_only))

    # -- what the verbs call -------------------------------------------------

    async def flush_domain(self, domain: str, subdomains: bool) -> int:
        """ETRN: deliver the held mail of a customer domain now."""
        count = await self.manager.flush_domain(CUSTOMERS_ROUTE, domain, subdomains)
        await self._remember(("." if subdomains else "") + domain, "ETRN", count)
        return count

    def pending(self, patterns: list[str]) -> int:
        """Recipients held for `patterns` (ATRN: 453 when none)."""
        return len(self.manager.scheduler.entries_in_domains(
            CUSTOMERS_ROUTE, lambda domain: any(domain_matches(domain, p) for p in patterns)))

    async def deliver_over(self, patterns: list[str], smtp: SmtpSession) -> int:
        """ATRN: deliver the held mail for `patterns` on the customer's connection."""
        route = next((r for r in self.config.route if r.name == CUSTOMERS_ROUTE), None)
        batch = BatchChannel(self.config.delivery, self.config.hostname,
                             route is None or route.tidepost_batch)
        session = TurnedSession(smtp, self.config.delivery.recipients_per_transaction, batch)
        cause = "ATRN " + ",".join(patterns)
        try:
            count = await self.manager.deliver_held(CUSTOMERS_ROUTE, patterns, session, cause)
        finally:
            await session.close()
        for pattern in patterns:
            await self._remember(pattern, "ATRN", count)
        return count

    def after_release(self, route: str, cause: str) -> None:
        """Manager hook: ask the route's upstreams to send what they hold for us."""
        config = next((r for r in self.config.route if r.name == route), None)
        if config is None or not config.etrn:
            return
        domains = config.etrn_domains or tuple(sorted(self.config.local.domains))
        log.info("route %s released (%s): ETRN %s to %s", route, cause,
                 " ".join(domains), ", ".join(config.etrn))
        self.upstreams.ask(route, UpstreamPlan(config.etrn, domains))

    # -- life cycle ------------------------------------------------------------

    async def start(self, tls_context: Any, bound: dict[str, Any] | None = None) -> None:
        """Hold customer mail, open ODMR listeners, watch the customer domains file."""
        self.manager.on_release = self.after_release
        if self.config.has_customers and CUSTOMERS_ROUTE not in await self.manager.held_routes():
            await self.manager.hold(CUSTOMERS_ROUTE, "customer mail waits for its customer")
        if self.config.relay.customer_domains_file:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        if self.directory is not None:
            self._shared = SharedLists(self.directory, self._queue, self._take_shared,
                                       self.config.queue.poll_interval)
            await self._shared.start()
        self._budgets = [asyncio.get_running_loop().create_task(limiter.run())
                         for limiter in (self.etrn_limiter, self.atrn_limiter)
                         if isinstance(limiter, ClusterRateLimiter)]
        if self.active and self.config.relay.odmr_listen:
            smtp = dataclasses.replace(self.config.smtp, listen=self.config.relay.odmr_listen)
            server = SmtpServer(dataclasses.replace(self.config, smtp=smtp), self.submission,
                                tls_context, conversation=self.conversation(odmr_only=True))
            await server.start(bound)
            self._servers.append(server)

    def reload(self) -> None:
        """SIGHUP: re-read the customer domains and credentials files now (and the database's)."""
        self.router.refresh_customers(force=True)
        if self._shared is not None:
            self._shared.look_again()
        if self.config.relay.credentials_file:
            try:
                self._file_credentials = Credentials.load(self.config.relay.credentials_file)
            except CredentialsError as exc:
                log.error("SIGHUP: keeping the old credentials: %s", exc)
                return
            self._update_credentials()
            log.info("credentials re-read: %d users", len(self.credentials or ()))

    def _take_shared(self, name: str, values: list) -> None:
        """SharedLists' callback: a list of the database changed."""
        if name == CUSTOMERS:
            self.router.set_shared_customers(tuple(values))
        else:
            self._shared_users = values
            self._update_credentials()
            log.info("AUTH users of the cluster: %d", len(values))

    def _update_credentials(self) -> None:
        """The file's users and the database's, in place for every listener."""
        if self.credentials is None:
            return
        fresh = self._file_credentials if self.directory is None \
            else Credentials.combined(self._shared_users, self._file_credentials)
        if fresh is not None:
            self.credentials.replace(fresh)

    async def close(self) -> None:
        """Stop the ODMR listeners, the watcher and the upstream requests."""
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if self._shared is not None:
            await self._shared.close()
        for task in [self._watcher, *self._budgets]:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.upstreams.close()

    async def _watch(self) -> None:
        """Re-read the customer domains file when it changes (checked once a second)."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                self.router.refresh_customers()
            except Exception:  # noqa: BLE001 - the watcher must go on
                log.exception("re-reading the customer domains failed")

    async def _remember(self, pattern: str, how: str, count: int) -> None:
        """Record a customer domain's release for `tidepost status`.

        The mail is on its way already: a database that cannot take the note
        costs the status line, not the customer's answer.
        """
        try:
            await self.releases.remember(pattern, how, count, self.clock.now())
        except QueueError as exc:
            log.warning("%s %s: the release is not recorded for tidepost status: %s",
                        how, pattern, exc)


class SharedLists:
    """Follows a cluster's shared lists: read at start, again on notice or version change.

    A database that cannot be read keeps the lists as they were (logged once
    per outage), so an outage never drops customers' domains or users.
    """

    def __init__(self, directory: SharedDirectory, queue: Any,
                 take: Any, poll_interval: float):
        self._directory = directory
        self._queue = queue
        self._take = take
        self._poll = poll_interval
        self._versions: dict[str, int] = {}
        self._wanted = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing = False

    async def start(self) -> None:
        """Read both lists, subscribe to notices and follow changes."""
        await self._queue.on_notice(self._noticed)
        await self._look()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def look_again(self) -> None:
        """Re-read both lists soon, whatever their versions say (SIGHUP)."""
        self._versions = {}
        self._wanted.set()

    def _noticed(self, payload: str) -> None:
        # After a reconnection notices may have been missed: the versions tell.
        if payload in (CUSTOMERS, CREDENTIALS, NOTICE_RECONNECTED):
            self._wanted.set()

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wanted.wait(), self._poll)
            except asyncio.TimeoutError:
                pass
            self._wanted.clear()
            await self._look()

    async def _look(self) -> None:
        """Re-read the lists whose version moved; keep them on a database error."""
        try:
            versions = await self._directory.versions()
            for name, read in ((CUSTOMERS, self._directory.customer_domains),
                               (CREDENTIALS, self._directory.credentials)):
                if versions.get(name) != self._versions.get(name):
                    self._take(name, await read())
                    self._versions[name] = versions[name]
        except Exception as exc:  # noqa: BLE001 - the lists stay; the next look retries
            if not self._failing:
                log.warning("cannot read the cluster's customer domains and users; "
                            "keeping them as they were: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("the cluster's customer domains and users are read again")
        self._failing = False

    async def close(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _load_credentials(config: Config) -> Credentials | None:
    """The credentials file's users; None when AUTH is off."""
    if not config.relay.credentials_file:
        return None
    try:
        return Credentials.load(config.relay.credentials_file)
    except CredentialsError as exc:
        raise ConfigError([f"relay.credentials_file: {exc}"]) from None


def _limiter(queue: Any, kind: str, limit: int) -> RateLimiter | ClusterRateLimiter:
    """The ETRN or ATRN budget: shared through the queue in a cluster, else this node's."""
    if queue is not None and hasattr(queue, "note_turn"):
        return ClusterRateLimiter(queue, kind, limit, TURN_WINDOW)
    return RateLimiter(limit, TURN_WINDOW)
