"""Composition root: one Config in, a running tidepost node out.

Builds the queue backend, router, aliases, submission, delivery agents,
queue manager, SMTP listeners and control socket, and runs them under one
TaskGroup until asked to stop.  This is the only place that knows every
component; each receives what it needs through its constructor.

Signals: SIGTERM/SIGINT stop the node (deliveries in flight get
`SHUTDOWN_GRACE` seconds to finish, then their recipients return to the
queue); SIGHUP re-reads the aliases file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from tidepost.address import NULL_SENDER, Address
from tidepost.clock import Clock, SystemClock
from tidepost.config.schema import Config
from tidepost.control import spool
from tidepost.control.client import socket_path
from tidepost.control.flagfiles import FlagFiles, control_dir
from tidepost.control.pickup import Maildrop, SubmitSocket
from tidepost.control.server import ControlServer
from tidepost.delivery.agent import DeliveryAgent
from tidepost.delivery.maildir import MaildirAgent, OwnerWriter
from tidepost.delivery.smtp import SmtpAgent
from tidepost.eventloop import new_event_loop
from tidepost.manager.hangup import Probes
from tidepost.manager.manager import Manager
from tidepost.model import Envelope
from tidepost.node_relay import RelayRole
from tidepost.queue.backend import QueueBackend, open_configured_queue
from tidepost.queue.owner import this_runner
from tidepost.resolver.cache import CACHE_FILE, CachedResolver, DnsCache
from tidepost.resolver.resolver import Resolver
from tidepost.routing.ledger import LEDGER_FILE, Ledger
from tidepost.routing.routes import LOCAL_ROUTE, Router
from tidepost.smtp_client.loops import OwnEndpoints
from tidepost.smtp_server.binding import parse_listen
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.smtp_server.tls import context_from_config
from tidepost.startup import Startup, close_startup, prepare_daemon
from tidepost.submission.aliases import Aliases, load_aliases_file
from tidepost.submission.inflow import InFlow
from tidepost.submission.local import LocalSubmitter
from tidepost.submission.submit import ClientInfo, Submission
from tidepost.submission.transfers import TransferKeys
from tidepost.usage.meter import LinkMeter

log = logging.getLogger("tidepost.node")

SHUTDOWN_GRACE = 30.0


@dataclass
class Parts:
    """The components of a node, for the CLI commands that need only some."""

    config: Config
    queue: QueueBackend
    router: Router
    aliases: Aliases
    manager: Manager
    submission: Submission
    meter: LinkMeter

    async def close(self) -> None:
        """Write the last link counts and close the queue."""
        await self.meter.close()
        await self.queue.close()


def build(config: Config, clock: Clock | None = None,
          owner_writer: OwnerWriter | None = None) -> Parts:
    """Wire the queue, routing, agents, manager and submission for `config`.

    `owner_writer` (the root helper) writes Maildirs as their owners.
    """
    clock = clock or SystemClock()
    config.spool_path.mkdir(parents=True, exist_ok=True)
    owner = this_runner()
    queue = open_configured_queue(config, owner)
    router = Router(config)
    aliases = Aliases(config)
    meter = LinkMeter.for_spool(config.spool_path, clock)
    # The SMTP agent's hold guard asks the manager, which exists only after
    # the agents: the lambda looks `manager` up when it is called.
    agents = build_agents(config, clock, is_held=lambda route: manager.is_held(route),
                          owner_writer=owner_writer, meter=meter)
    manager = Manager(config, queue, router, agents, clock, owner, meter=meter)
    inflow = InFlow(config.queue.in_flow_delay, manager.behind)
    manager.on_recorded = inflow.delivered
    submission = Submission(config, queue, clock, router, aliases, on_queued=manager.queued,
                            transfers=TransferKeys.load(config.spool_path), inflow=inflow)
    manager.notices.submit = notice_submitter(submission)
    return Parts(config, queue, router, aliases, manager, submission, meter)


def notice_submitter(submission: Submission) -> Callable[[Address, bytes], Awaitable[str]]:
    """How the manager's notices are queued: as local mail from the null sender."""
    client = ClientInfo(protocol="local", local_user="MAILER-DAEMON", way="notice")

    async def submit(to: Address, message: bytes) -> str:
        return await submission.submit(Envelope(NULL_SENDER, (to,)), message, client)
    return submit


def build_agents(config: Config, clock: Clock, is_held: Callable[[str], bool] | None = None,
                 owner_writer: OwnerWriter | None = None,
                 meter: LinkMeter | None = None) -> dict[str, DeliveryAgent]:
    """The delivery agents by kind: `local` (Maildir) and `smtp`.

    The SMTP agent resolves through the persistent DNS cache in the spool,
    refuses traffic on on-demand routes that `is_held`, notes what it
    sends through them in the link ledger, and counts every route's bytes,
    connections and round trips in the link meter.
    """
    cache = DnsCache(config.spool_path / CACHE_FILE, clock)
    resolver = CachedResolver(cache, Resolver(config.dns))
    ledger = Ledger(config.spool_path / LEDGER_FILE, clock)
    return {
        LOCAL_ROUTE: MaildirAgent(config.local.maildir, config.spool_path, config.hostname,
                                  owner_writer, config.local.system_users),
        "smtp": SmtpAgent(config.delivery, resolver, config.hostname, clock,
                          is_held=is_held, ledger=ledger, meter=meter,
                          own_endpoints=own_endpoints(config)),
    }


def own_endpoints(config: Config) -> OwnEndpoints:
    """Where this node listens for SMTP: a next hop there would loop back to us."""
    return OwnEndpoints(parse_listen(entry)
                        for entry in (*config.smtp.listen, *config.relay.odmr_listen))


def run_daemon(config: Config) -> None:
    """`tidepost serve`: prepare the process (startup.py), then serve until stopped."""
    startup = prepare_daemon(config)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config, startup))
    finally:
        close_startup(startup)


async def serve(config: Config, startup: Startup | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT (on sockets `startup` bound, if given)."""
    startup = startup or prepare_daemon(config)
    parts = build(config, owner_writer=startup.helper)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    relay = RelayRole(config, parts.manager, parts.router, parts.submission, SystemClock(),
                      queue=parts.queue)

    flags = FlagFiles(config)

    def on_hangup() -> None:
        _reload(parts, loop, flags)
        relay.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    tls_context = context_from_config(config)
    server = SmtpServer(config, parts.submission, tls_context, relay.conversation())
    control = ControlServer(socket_path(config.spool_path),
                            control_handlers(parts, reload=on_hangup))
    local = LocalSubmitter(config, parts.submission)
    size = config.smtp.max_message_size
    submit = SubmitSocket(spool.submit_socket(config.spool_path), local, size)
    maildrop = Maildrop(spool.maildrop(config.spool_path), local, size)
    parts.manager.serving = True  # ETRN before the queue is loaded waits for it
    await server.start(startup.bound)
    await relay.start(tls_context, startup.bound)
    parts.manager.drains.probes = drain_probes(parts, relay, server)
    await control.start()
    await submit.start()
    control_dir(config).mkdir(exist_ok=True)
    await _apply_flag_files(parts, flags)
    pickup = asyncio.create_task(maildrop.run(config.queue.poll_interval))
    metering = asyncio.create_task(parts.meter.run(stopping))
    log.info("tidepost started as %s: %s, spool %s, config %s", startup.account.name,
             ", ".join(config.smtp.listen), config.spool, config.source)
    try:
        await _run_manager(parts, stopping)
    finally:
        server.close()
        await server.wait_closed()
        pickup.cancel()
        await asyncio.gather(pickup, return_exceptions=True)
        await submit.close()
        await relay.close()
        await control.close()
        stopping.set()
        await asyncio.gather(metering, return_exceptions=True)
        await parts.close()
        log.info("tidepost stopped")


async def _run_manager(parts: Parts, stopping: asyncio.Event) -> None:
    """Run the manager; on stop, give deliveries in flight a grace period."""
    task = asyncio.create_task(parts.manager.run(stopping))
    # A manager that dies on its own must stop the node too: a daemon that
    # accepts mail it will never deliver is worse than one that exits.
    stopped = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    stopping.set()
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await parts.queue.release_claims(parts.manager.owner)
    elif task.exception() is not None:
        raise task.exception()


def drain_probes(parts: Parts, relay: RelayRole, server: SmtpServer) -> Probes:
    """What the hang-up signal watches (manager/hangup.py): mail, connections, ETRN, clients.

    An SMTP client from outside smtp.relay_networks is what an upstream
    delivering to us after ETRN looks like.
    """
    ours = [ipaddress.ip_network(n, strict=False) for n in parts.config.smtp.relay_networks]

    def outside(ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return True
        return not any(address in network for network in ours)

    return Probes(due=parts.manager.due_on,
                  connected=lambda route: int(parts.meter.online(route)),
                  asking=relay.upstreams.pending,
                  inbound=lambda: sum(1 for ip in server.clients() if outside(ip)))


def _reload(parts: Parts, loop: asyncio.AbstractEventLoop, flags: FlagFiles) -> None:
    """SIGHUP: re-read the aliases file and the control flag files."""
    try:
        parts.aliases.replace(load_aliases_file(parts.config.local.aliases_file))
        log.info("aliases re-read")
    except Exception as exc:  # noqa: BLE001 - keep the old aliases
        log.error("SIGHUP: keeping the old aliases: %s", exc)
    task = loop.create_task(_apply_flag_files(parts, flags))
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()


async def _apply_flag_files(parts: Parts, flags: FlagFiles) -> None:
    """Hold or release the routes whose control flag files changed (see flagfiles.py)."""
    changes = flags.changes()
    held = await parts.manager.held_routes()
    for route, want_held in changes.items():
        if want_held and route not in held:
            await parts.manager.hold(route, "control file")
        elif not want_held and route in held:
            await parts.manager.release(route, "control file removed (SIGHUP)")


def control_handlers(parts: Parts, reload: Callable[[], None] = lambda: None
                     ) -> dict[str, Any]:
    """Control socket commands of a running node (`reload` is what SIGHUP does)."""
    manager = parts.manager

    async def reread(request: dict) -> dict:
        reload()
        return {}

    async def wake(request: dict) -> dict:
        await manager.catch_up()
        return {}

    async def hold(request: dict) -> dict:
        route = _known_route(parts, request.get("route"))
        await manager.hold(route, request.get("cause", "command"))
        return {"route": route, "held": True}

    async def release(request: dict) -> dict:
        route = _known_route(parts, request.get("route"))
        count = await manager.release(route, request.get("cause", "command"))
        return {"route": route, "held": False, "scheduled": count}

    async def status(request: dict) -> dict:
        return {"scheduler": manager.scheduler.statistics()}

    async def odmr(request: dict) -> dict:
        route = _known_route(parts, request.get("route"))
        manager.drains.odmr(route, str(request.get("token", "")), bool(request.get("running")))
        return {"route": route}

    return {"wake": wake, "hold": hold, "release": release, "status": status,
            "reload": reread, "odmr": odmr}


def _known_route(parts: Parts, name: Any) -> str:
    """Validate a route name from a control request."""
    if name not in parts.router.route_names():
        raise ValueError(f"no route named {name!r}")
    return name
