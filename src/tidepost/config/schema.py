"""The one configuration schema: every key with its default, bounds and doc.

Each section is a frozen dataclass; each field carries `meta(doc, ...)`
with its one-line documentation, its bounds and its kind (duration, size).
`config/load.py` validates a TOML file against these classes, and
docs/CONFIG.md is generated from them (`python -m tidepost.config.docs`).
Values reach components through their constructors, never as globals.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def meta(doc: str, *, low: float | None = None, high: float | None = None,
         kind: str = "", choices: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata: one-line doc, numeric bounds, kind (duration/size), choices."""
    return {"doc": doc, "low": low, "high": high, "kind": kind, "choices": choices}


def default_spool() -> str:
    """Spool folder of the embedded default: $TIDEPOST_SPOOL or the user's state dir."""
    if os.environ.get("TIDEPOST_SPOOL"):
        return os.environ["TIDEPOST_SPOOL"]
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "tidepost")


def default_hostname() -> str:
    """The kernel's host name: a local call, never a DNS query."""
    return socket.gethostname()


MIB = 1024 * 1024
CUSTOMERS_ROUTE = "customers"  # the built-in route holding customer domains' mail


@dataclass(frozen=True)
class SmtpServerConfig:
    """[smtp]: the SMTP listeners and their limits."""

    listen: tuple[str, ...] = field(default=("127.0.0.1:2525",), metadata=meta(
        "addresses to listen on, HOST:PORT ([::1]:PORT for IPv6)"))
    max_message_size: int = field(default=25 * MIB, metadata=meta(
        "largest message accepted, in bytes (SIZE)", low=1024, high=2**31, kind="size"))
    max_recipients: int = field(default=100, metadata=meta(
        "recipients per message; more get 452 4.5.3", low=1, high=100000))
    max_connections: int = field(default=200, metadata=meta(
        "concurrent SMTP connections; more get 421 4.7.0", low=1, high=100000))
    reserved_connections: int = field(default=20, metadata=meta(
        "of max_connections, slots only relay_networks and recently authenticated "
        "clients may take; must be below max_connections", low=0, high=100000))
    max_connections_per_client: int = field(default=30, metadata=meta(
        "concurrent connections from one IP address (relay_networks exempt)",
        low=1, high=100000))
    max_connection_rate: int = field(default=60, metadata=meta(
        "new connections per minute from one IP address (relay_networks exempt); "
        "0: no limit", low=0, high=1000000))
    idle_timeout: float = field(default=300.0, metadata=meta(
        "seconds a client may stay silent before 421 4.4.2", low=1, high=3600, kind="duration"))
    command_deadline: float = field(default=300.0, metadata=meta(
        "seconds one whole command line (or AUTH response) may take, however it "
        "trickles; only a complete line resets it; then 421 4.4.2", low=1, high=3600,
        kind="duration"))
    min_data_rate: int = field(default=100, metadata=meta(
        "bytes/s a DATA section must average over each data_rate_window (the first one "
        "is the grace period); slower gets 421 4.4.2; 0: no minimum", low=0, high=10**9))
    data_rate_window: float = field(default=30.0, metadata=meta(
        "seconds over which min_data_rate is averaged", low=1, high=3600,
        kind="duration"))
    max_session_time: float = field(default=3600.0, metadata=meta(
        "seconds a client outside relay_networks and AUTH may stay connected; checked "
        "between commands, never inside DATA (421 4.4.2); 0: no limit", low=0,
        high=7 * 86400, kind="duration"))
    max_errors: int = field(default=20, metadata=meta(
        "bad commands before the connection is closed with 421", low=1, high=1000))
    relay_networks: tuple[str, ...] = field(default=("127.0.0.0/8", "::1/128"), metadata=meta(
        "client networks allowed to relay to any domain"))
    tls_certificate: str = field(default="", metadata=meta(
        "PEM certificate chain for STARTTLS; empty disables STARTTLS"))
    tls_key: str = field(default="", metadata=meta("PEM private key for STARTTLS"))
    chunking: bool = field(default=True, metadata=meta(
        "offer CHUNKING and take BDAT (RFC 3030); off, BDAT gets 502 5.5.1 (its octets "
        "still read and discarded)"))
    batch: bool = field(default=True, metadata=meta(
        "offer XTIDEPOST BATCH to tidepost peers: many messages per round trip, "
        "compressed, resumable (docs/BATCH.md); an EHLO keyword that other clients "
        "ignore; an untrusted client's refusals in a batch count against max_errors"))
    batch_partial_lifetime: float = field(default=86400.0, metadata=meta(
        "seconds a partly received batch message is kept in SPOOL/batch-partial for its "
        "sender to resume", low=60, high=30 * 86400, kind="duration"))
    batch_partial_space: int = field(default=1 << 30, metadata=meta(
        "disk space all partly received batch messages may take together: past it the "
        "least recently written are forgotten (their senders resend them whole); 0 keeps "
        "none", low=0, high=2**50, kind="size"))


@dataclass(frozen=True)
class LocalConfig:
    """[local]: domains delivered to Maildirs on this host."""

    domains: tuple[str, ...] = field(default=("localhost",), metadata=meta(
        "domains whose mail is delivered here (the host name is always added)"))
    maildir: str = field(default="{spool}/mail/{user}", metadata=meta(
        "Maildir of each user; {spool}, {user} and {home} (the account's home folder) "
        "are substituted; \"{home}/Maildir\" on a system install"))
    aliases_file: str = field(default="", metadata=meta(
        "aliases file (name: target, target); postmaster always resolves"))
    users: tuple[str, ...] = field(default=(), metadata=meta(
        "local users besides system accounts and aliases"))
    system_users: bool = field(default=True, metadata=meta(
        "accept mail for accounts in the local password database"))


@dataclass(frozen=True)
class RelayConfig:
    """[relay]: domains accepted from anyone and delivered onwards."""

    domains: tuple[str, ...] = field(default=(), metadata=meta(
        "relay domains (.example.org for all subdomains)"))
    customer_domains: tuple[str, ...] = field(default=(), metadata=meta(
        "customer domains: accepted from anyone, held on route `customers` until the "
        "customer asks (ETRN, ATRN); .example.org for the domain and its subdomains"))
    customer_domains_file: str = field(default="", metadata=meta(
        "file of more customer domains, one a line, # comments; re-read when it "
        "changes and on SIGHUP; in a cluster the database's list (`tidepost customers`) "
        "counts too"))
    etrn_networks: tuple[str, ...] = field(default=(), metadata=meta(
        "client networks that may ETRN any customer domain; empty: anyone may "
        "(authenticated customers may always ETRN their own domains)"))
    etrn_rate: int = field(default=10, metadata=meta(
        "well-formed ETRN requests per client address per minute; more get 458 4.7.0",
        low=1, high=100000))
    atrn_rate: int = field(default=10, metadata=meta(
        "ATRN requests per client address per minute (a budget apart from ETRN's); "
        "more get 451 4.7.0", low=1, high=100000))
    credentials_file: str = field(default="", metadata=meta(
        "SMTP AUTH users, `user:scrypt$salt$hash[:domain,domain]` a line "
        "(`tidepost passwd`); empty disables AUTH, except in a cluster, whose users are "
        "in the database (`tidepost passwd` stores them there)"))
    odmr_listen: tuple[str, ...] = field(default=(), metadata=meta(
        "extra listeners for On-Demand Mail Relay (RFC 2645), HOST:PORT; port 366 by "
        "convention"))


@dataclass(frozen=True)
class QueueConfig:
    """[queue]: the durable store and retry policy."""

    backend: str = field(default="sqlite", metadata=meta(
        "queue store: sqlite (one node, in the spool), postgresql (a cluster of nodes "
        "on one database, docs/CLUSTER.md), memory (tests)",
        choices=("sqlite", "memory", "postgresql")))
    dsn: str = field(default="", metadata=meta(
        "backend postgresql: the database, as a libpq URI "
        "(postgresql://user@host:port/database); required for that backend"))
    node: str = field(default="", metadata=meta(
        "backend postgresql: this node's name in `tidepost status` (default: the host name)"))
    node_timeout: float = field(default=30.0, metadata=meta(
        "backend postgresql: a node silent this long is dead and its deliveries in flight "
        "return to the other nodes", low=3, high=3600, kind="duration"))
    lifetime: float = field(default=5 * 86400.0, metadata=meta(
        "give up and bounce after this long in the queue", low=60, kind="duration"))
    delay_warning: float = field(default=4 * 3600.0, metadata=meta(
        "warn the sender after this long undelivered (0 disables)", low=0, kind="duration"))
    min_backoff: float = field(default=300.0, metadata=meta(
        "first retry interval after a temporary failure", low=1, kind="duration"))
    max_backoff: float = field(default=4000.0, metadata=meta(
        "longest retry interval (doubling from min_backoff)", low=1, kind="duration"))
    poll_interval: float = field(default=5.0, metadata=meta(
        "how often the daemon looks for mail queued by other processes", low=0.1,
        high=3600, kind="duration"))
    in_flow_delay: float = field(default=1.0, metadata=meta(
        "while delivery is behind (over 5 recipients per delivery slot in flight, or "
        "every slot busy with due mail waiting), each SMTP transaction waits up to this "
        "long at MAIL FROM for a delivery to finish, as Postfix's in_flow_delay; "
        "0 disables", low=0, high=10, kind="duration"))


@dataclass(frozen=True)
class DeliveryConfig:
    """[delivery]: outbound SMTP."""

    smtp_port: int = field(default=25, metadata=meta(
        "TCP port of MX hosts", low=1, high=65535))
    connect_timeout: float = field(default=30.0, metadata=meta(
        "seconds to wait for a TCP connection and greeting", low=0.1, kind="duration"))
    command_timeout: float = field(default=300.0, metadata=meta(
        "seconds to wait for a reply (RFC 5321 4.5.3.2)", low=0.1, kind="duration"))
    data_done_timeout: float = field(default=600.0, metadata=meta(
        "seconds to wait for the reply to a message's content (the final dot, BDAT LAST): "
        "RFC 5321 4.5.3.2.6 asks for 10 minutes, as servers scan the message first; "
        "giving up sooner delivers it again later", low=0.1, kind="duration"))
    max_concurrency: int = field(default=100, metadata=meta(
        "deliveries in flight at once, all destinations", low=1, high=10000))
    destination_concurrency: int = field(default=10, metadata=meta(
        "parallel connections to one destination", low=1, high=1000))
    recipients_per_transaction: int = field(default=50, metadata=meta(
        "recipients sent in one SMTP transaction", low=1, high=1000))
    pipeline_depth: int = field(default=1, metadata=meta(
        "with PIPELINING: messages on one connection whose content may be out before "
        "the one before them is recorded; 1 sends the next message's commands with this "
        "one's content (one round trip a message) and repeats at most one after a crash; "
        "more lets CHUNKING stream; 0: one message after another", low=0, high=16))
    starttls: str = field(default="opportunistic", metadata=meta(
        "STARTTLS when offered", choices=("opportunistic", "never")))
    batch_chunk_size: int = field(default=32 * 1024, metadata=meta(
        "XTIDEPOST BATCH: compressed bytes per chunk, each acknowledged once durable; a "
        "cut link sends at most about this much again", low=4096, high=1024 * 1024,
        kind="size"))
    batch_window: int = field(default=4, metadata=meta(
        "XTIDEPOST BATCH: chunks sent ahead of their acknowledgement", low=1, high=64))
    max_mx_hosts: int = field(default=5, metadata=meta(
        "MX hosts tried per attempt", low=1, high=50))


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: the resolver used for MX, A and AAAA lookups."""

    nameservers: tuple[str, ...] = field(default=(), metadata=meta(
        "HOST or HOST:PORT of nameservers; empty uses /etc/resolv.conf"))
    timeout: float = field(default=10.0, metadata=meta(
        "seconds for one lookup", low=0.1, high=300, kind="duration"))


@dataclass(frozen=True)
class RouteConfig:
    """[[route]]: one named outbound path (SPEC section 2)."""

    name: str = field(default="", metadata=meta("the route's name, used by `tidepost link`"))
    domains: tuple[str, ...] = field(default=("*",), metadata=meta(
        "destination domains served; first matching route wins; * for the rest"))
    transport: str = field(default="mx", metadata=meta(
        "deliver to MX hosts or to a smarthost", choices=("mx", "smarthost")))
    smarthost: str = field(default="", metadata=meta(
        "HOST[:PORT] when transport is smarthost"))
    on_demand: bool = field(default=True, metadata=meta(
        "an uplink that costs when used (false: an always-up LAN route)"))
    start_held: bool = field(default=False, metadata=meta(
        "held at first start (the state then persists across restarts)"))
    concurrency: int = field(default=0, metadata=meta(
        "parallel connections per destination on this route (0: [delivery] value)",
        low=0, high=1000))
    max_connections: int = field(default=20, metadata=meta(
        "connections open at once on this route, all destinations together: more "
        "only fill a slow link's queue and cause retransmissions", low=1, high=10000))
    rate: float = field(default=0.0, metadata=meta(
        "the link's speed in bits/s (\"56k\", \"1M\"): the route then opens only the "
        "connections that keep it busy, from this, the measured round trip and the "
        "message sizes, up to max_connections (0: unknown, max_connections)",
        low=0, high=1e12, kind="rate"))
    dial_delay: float = field(default=0.0, metadata=meta(
        "on-demand routes: when a session's first connect fails, wait this long and "
        "dial once more, while the link comes up (0: off)", low=0, high=600,
        kind="duration"))
    max_message_size: int = field(default=0, metadata=meta(
        "larger messages skip this route for the next matching one (0: no limit)",
        low=0, high=2**31, kind="size"))
    schedule: tuple[str, ...] = field(default=(), metadata=meta(
        "queue-run times, first matching rule wins: \"Mon-Fri 08:00-18:00 every 15m\", "
        "\"every 1h\"; empty: deliver as mail arrives"))
    tidepost_batch: bool = field(default=True, metadata=meta(
        "to a peer that offers XTIDEPOST BATCH (tidepost): send compressed batches "
        "instead of one SMTP transaction per message; other peers get plain SMTP"))
    batch_messages: int = field(default=0, metadata=meta(
        "with a schedule: also run when this many messages wait (0: off)", low=0))
    batch_age: float = field(default=0.0, metadata=meta(
        "with a schedule: also run when the oldest message has waited this long (0: off)",
        low=0, kind="duration"))
    cap_day: int = field(default=0, metadata=meta(
        "bytes a day, up and down as the link meters them, after which the route holds "
        "itself until the next day; urgent mail still goes (0: no cap)",
        low=0, high=2**50, kind="size"))
    cap_month: int = field(default=0, metadata=meta(
        "the same for a calendar month (0: no cap)", low=0, high=2**50, kind="size"))
    urgent_senders: tuple[str, ...] = field(default=(), metadata=meta(
        "senders whose mail passes a data cap: addresses, or @domain"))
    urgent_headers: bool = field(default=True, metadata=meta(
        "mail marked `X-Tidepost-Urgent: yes` or `Priority: urgent` passes a data cap"))
    etrn: tuple[str, ...] = field(default=(), metadata=meta(
        "upstreams HOST[:PORT] asked by ETRN (RFC 1985) to send their mail for us "
        "when this route is released"))
    etrn_domains: tuple[str, ...] = field(default=(), metadata=meta(
        "domains named in those ETRN requests (empty: the local domains)"))
    hangup_command: str = field(default="", metadata=meta(
        "run when a release's drain is complete, to drop the link at once (\"poff\", "
        "\"nmcli con down wwan0\"): split like a shell line, run without a shell"))
    hangup_file: str = field(default="", metadata=meta(
        "file written when a release's drain is complete (relative: in SPOOL/control)"))
    hangup_grace: float = field(default=5.0, metadata=meta(
        "seconds everything must stay quiet before the drain counts as complete",
        low=0, high=600, kind="duration"))
    hangup_timeout: float = field(default=30.0, metadata=meta(
        "seconds hangup_command may run before it is killed", low=1, high=3600,
        kind="duration"))
    idle_timeout: float = field(default=0.0, metadata=meta(
        "the dialer's own idle timer (pppd `idle`), to log the online seconds the "
        "hang-up signal saved (0: not logged)", low=0, high=86400, kind="duration"))


@dataclass(frozen=True)
class SystemConfig:
    """[system]: how tidepost runs on this machine (privileges, trusted users)."""

    user: str = field(default="tidepost", metadata=meta(
        "account that `serve` (and every command started as root) switches to after "
        "binding its ports; it owns the spool. \"root\" keeps root (not recommended)"))
    trusted_users: tuple[str, ...] = field(default=("root",), metadata=meta(
        "local users who may set the envelope sender (`sendmail -f`); the daemon's own "
        "account always may. Others' -f is replaced by their own address"))


@dataclass(frozen=True)
class LogConfig:
    """[log]: where the mail log goes (docs/LOGGING.md)."""

    level: str = field(default="info", metadata=meta(
        "lowest level logged", choices=("debug", "info", "warning", "error")))
    syslog: bool = field(default=False, metadata=meta(
        "also log to syslog (facility mail) through log.syslog_socket"))
    syslog_socket: str = field(default="/dev/log", metadata=meta(
        "the syslog daemon's socket"))
    file: str = field(default="", metadata=meta(
        "also append the log to this file (empty: none)"))


@dataclass(frozen=True)
class Config:
    """The whole configuration of one tidepost node."""

    hostname: str = field(default_factory=default_hostname, metadata=meta(
        "this host's name in greetings, Received and DSNs; never looked up in DNS"))
    spool: str = field(default_factory=default_spool, metadata=meta(
        "folder holding the queue, control socket and default Maildirs"))
    smtp: SmtpServerConfig = field(default_factory=SmtpServerConfig, metadata=meta("SMTP in"))
    local: LocalConfig = field(default_factory=LocalConfig, metadata=meta("local delivery"))
    relay: RelayConfig = field(default_factory=RelayConfig, metadata=meta("relay domains"))
    queue: QueueConfig = field(default_factory=QueueConfig, metadata=meta("the queue"))
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig, metadata=meta("SMTP out"))
    dns: DnsConfig = field(default_factory=DnsConfig, metadata=meta("DNS"))
    route: tuple[RouteConfig, ...] = field(default=(), metadata=meta(
        "outbound routes, in match order"))
    system: SystemConfig = field(default_factory=SystemConfig, metadata=meta(
        "privileges and trusted users"))
    log: LogConfig = field(default_factory=LogConfig, metadata=meta("the mail log"))
    source: str = field(default="<embedded default>", compare=False, metadata=meta(
        "where this configuration was read from (not a key)"))

    @property
    def spool_path(self) -> Path:
        """The spool folder as a Path."""
        return Path(self.spool)

    @property
    def has_customers(self) -> bool:
        """True when this node holds mail for customer domains (relay role).

        Always in a cluster: its customer domains are in the database
        (`tidepost customers`), and may be added while the nodes run.
        """
        return bool(self.relay.customer_domains or self.relay.customer_domains_file
                    or self.queue.backend == "postgresql")

    @property
    def node_name(self) -> str:
        """This node's name in a cluster: queue.node, else the host name."""
        return self.queue.node or self.hostname

    @property
    def local_domains(self) -> frozenset[str]:
        """Local domains, the host name included."""
        return frozenset({*self.local.domains, self.hostname.lower()})
