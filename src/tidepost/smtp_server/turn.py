"""The relay role's verbs: ETRN (RFC 1985), AUTH (RFC 4954), ATRN (RFC 2645).

`RelayConversation` is a `Conversation` with three more verbs; it gets what
it needs from the rest of the node as a `RelayServices` (node.py wires it),
never the queue manager itself (layers: smtp_server sits beside manager).

ETRN `domain` | `@domain` (the domain and its subdomains) | `#queue`:
  503 before HELO/EHLO or inside a mail transaction; 501 5.5.4 for anything
  else (RFC 1985 allows an ASCII domain name only: `bücher.example`, an
  address literal or an empty `#` are 501), checked before any budget;
  458 4.3.0 for `#queue` (named queues are not supported) and when the
  flush fails; 458 4.7.0 over `relay.etrn_rate` well-formed requests per
  client address per minute; 459 4.7.1 for a domain that is not a customer
  domain, or a client that may not ask (`relay.etrn_networks` non-empty and the client
  outside them, and not authenticated as the domain's customer).
  Otherwise the domain's held mail is handed to the dispatcher at once and
  the reply is 253 2.0.0 with the number of recipients started, or 251 2.0.0
  when none is waiting.  The route stays held: mail arriving later waits for
  the next request.
AUTH PLAIN | LOGIN: offered when `relay.credentials_file` is set, and only
  over TLS or from loopback; bad credentials 535 5.7.8; success 235 2.7.0,
  after which the client may relay and ETRN/ATRN its own domains.
ATRN [domain[,domain...]] (no argument: all of the user's domains): 530 5.7.0
  without AUTH; 501 5.5.4 for a list that is not of ASCII domain names;
  450 4.7.1 for a domain not granted to the user; 451 4.7.0 over
  `relay.atrn_rate` requests per client address per minute (a budget of its
  own: ETRNs never use it up); 453 when no mail waits; else 250, and the
  roles reverse on this connection: the customer greets us, we say EHLO and
  deliver its held mail, then QUIT.
XTIDEPOST BATCH (before ATRN): 250 2.0.0; the client serves the reversed
  session itself, so it may carry XTIDEPOST BATCH (docs/BATCH.md); without
  it the reversed session is plain SMTP even when the EHLO reply offers
  BATCH (fetchmail passes the site's EHLO through, not a binary stream).
On an ODMR listener (`odmr_only`, `relay.odmr_listen`) every other command
but EHLO, HELO, AUTH, ATRN, STARTTLS, NOOP, RSET, HELP, QUIT and XTIDEPOST
gets 502 (RFC 2645 5.4).
Config keys read: relay.etrn_networks, relay.etrn_rate, relay.atrn_rate (through
RelayServices).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from tidepost.address import AddressError, domain_matches, in_networks, normalise_domain
from tidepost.errors import QueueError
from tidepost.smtp_client.session import Peer, SmtpSession
from tidepost.smtp_server import auth as A
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.credentials import Credentials
from tidepost.smtp_server.ratelimit import RateLimiter
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.session import Conversation

log = logging.getLogger("tidepost.smtp_server.turn")

S501_ETRN_SYNTAX = Reply(501, "5.5.4", "Syntax: ETRN domain | ETRN @domain")
S501_ATRN_SYNTAX = Reply(501, "5.5.4", "Syntax: ATRN [domain[,domain...]]")
S502_ODMR_ONLY = Reply(502, "5.5.1", "Command not implemented on this On-Demand Mail "
                                     "Relay port")
S503_IN_TRANSACTION = Reply(503, "5.5.1", "Not allowed during a mail transaction")
S503_ATRN_PIPELINED = Reply(503, "5.5.1", "ATRN must be the last command sent before "
                                          "its reply")
S250_REVERSING = Reply(250, "2.0.0", "OK now reversing the connection")
S451_ATRN_LATER = Reply(451, "4.7.0", "Unable to process ATRN request now")
S453_NO_MAIL = Reply(453, "4.3.0", "You have no mail")
ODMR_VERBS = {"EHLO", "HELO", "AUTH", "ATRN", "STARTTLS", "NOOP", "RSET", "HELP", "QUIT",
              "XTIDEPOST"}
TURN_WINDOW = 60.0  # seconds over which relay.etrn_rate and relay.atrn_rate count


def s251_none_waiting(node: str) -> Reply:
    """ETRN: nothing is held for the node."""
    return Reply(251, "2.0.0", f"OK, no messages waiting for node {node}")


def s253_started(node: str, count: int) -> Reply:
    """ETRN: delivery of `count` held messages (recipients) started."""
    return Reply(253, "2.0.0", f"OK, {count} pending messages for node {node} started")


def s458_unable(node: str, why: str) -> Reply:
    """ETRN: cannot start the queue for the node now."""
    return Reply(458, "4.3.0", f"Unable to queue messages for node {node}: {why}")


def s458_too_many(node: str) -> Reply:
    """ETRN: this client has used its `relay.etrn_rate` budget."""
    return Reply(458, "4.7.0", f"Unable to queue messages for node {node}: too many "
                               "requests, try again later")


def s459_not_allowed(node: str, why: str) -> Reply:
    """ETRN: the node is not one we hold mail for, or not for this client."""
    return Reply(459, "4.7.1", f"Node {node} not allowed: {why}")


def s450_refused(domain: str) -> Reply:
    """ATRN: a domain not granted to the authenticated user."""
    return Reply(450, "4.7.1", f"ATRN request refused: {domain} is not yours")


def ascii_domain(text: str) -> str | None:
    """`text` as a normalised domain name if it is one in ASCII (RFC 1985), else None."""
    if not text.isascii() or text.startswith("["):
        return None
    try:
        return normalise_domain(text)
    except AddressError:
        return None


def is_queue_name(text: str) -> bool:
    """True for the name after ETRN `#`: printable ASCII, no space, 1-255 octets."""
    return 0 < len(text) <= 255 and text.isascii() and text.isprintable() and " " not in text


@dataclass
class RelayServices:
    """What the relay verbs need from the node (injected, no manager import)."""

    flush_domain: Callable[[str, bool], Awaitable[int]]   # ETRN: (domain, subdomains)
    is_customer: Callable[[str], bool]
    etrn_limiter: RateLimiter                              # relay.etrn_rate
    atrn_limiter: RateLimiter                              # relay.atrn_rate
    etrn_networks: tuple[Any, ...] = ()                    # ip_network objects
    credentials: Credentials | None = None
    pending: Callable[[list[str]], int] = lambda patterns: 0
    # ATRN: deliver the held mail for the patterns over the reversed session.
    deliver_over: Callable[[list[str], SmtpSession], Awaitable[int]] | None = None
    greeting_timeout: float = 30.0
    command_timeout: float = 300.0
    odmr_only: bool = False
    statistics: dict[str, int] = field(default_factory=lambda: {
        "etrn": 0, "etrn_refused": 0, "auth_ok": 0, "auth_failed": 0, "atrn": 0})


class RelayConversation(Conversation):
    """A Conversation that also speaks ETRN, AUTH and ATRN."""

    def __init__(self, *args: Any, relay: RelayServices, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.relay = relay
        self.client_features: set[str] = set()  # XTIDEPOST words the ATRN client declared

    def smtp_XTIDEPOST(self, arg: str) -> None:
        """XTIDEPOST features: an ODMR client that serves the reversed session itself.

        Only then does the reversed session use XTIDEPOST BATCH: a proxy such
        as fetchmail passes the site's EHLO through but not a binary stream.
        """
        self.client_features = set(arg.upper().split())
        self.reply(S.S250_OK)

    def forget_client(self) -> None:
        """After STARTTLS also forget the XTIDEPOST words the client declared."""
        super().forget_client()
        self.client_features = set()

    def extensions(self) -> list[str]:
        """EHLO keywords: the base ones, ETRN, AUTH where allowed, ATRN."""
        keywords = [] if self.relay.odmr_only else super().extensions()
        if self.relay.odmr_only and self._tls_available() and not self.session.tls:
            keywords.append("STARTTLS")
        if not self.relay.odmr_only:
            keywords.append("ETRN")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(self._mechanisms()))
        if self.relay.credentials is not None:
            keywords.append("ATRN")
        return keywords

    def _handler(self, verb: str) -> Callable[[str], Any] | None:
        """On an ODMR port, other verbs than the profile's get 502 (RFC 2645 5.4)."""
        handler = super()._handler(verb)
        if handler is not None and self.relay.odmr_only and verb.upper() not in ODMR_VERBS:
            return lambda arg: self.reply(S502_ODMR_ONLY)
        return handler

    # -- ETRN -----------------------------------------------------------------

    async def smtp_ETRN(self, arg: str) -> None:
        """ETRN: deliver now what we hold for a customer domain (RFC 1985)."""
        refusal = self._etrn_refusal(arg)
        if refusal is not None:
            self.relay.statistics["etrn_refused"] += 1
            return self.reply(refusal)
        subdomains = arg.startswith("@")
        domain = normalise_domain(arg[1:] if subdomains else arg)
        try:
            count = await self.relay.flush_domain(domain, subdomains)
        except QueueError as exc:  # the store is away (a cluster's database): a line, no trace
            log.error("ETRN %s from %s failed: %s", arg, self.session.peer_ip, exc)
            return self.reply(s458_unable(arg, "local error, try again later"))
        except Exception:
            log.exception("ETRN %s from %s failed", arg, self.session.peer_ip)
            return self.reply(s458_unable(arg, "local error, try again later"))
        self.relay.statistics["etrn"] += 1
        log.info("ETRN %s from %s: %d recipients started", arg, self.session.peer_ip, count)
        self.reply(s253_started(arg, count) if count else s251_none_waiting(arg))

    def _etrn_refusal(self, arg: str) -> Reply | None:
        """The reply refusing this ETRN, or None when it may go ahead.

        Syntax first (RFC 1985: a domain name, `@domain` or `#queue`), so a
        malformed request gets 501 and costs no budget; then the client's
        own ETRN budget; then whether we hold mail for it and for this client.
        """
        if not self.session.helo:
            return S.S503_HELO_FIRST
        if self.transaction is not None:
            return S503_IN_TRANSACTION
        if arg.startswith("#"):
            if not is_queue_name(arg[1:]):
                return S501_ETRN_SYNTAX
            return s458_unable(arg, "named queues are not supported")
        domain = ascii_domain(arg[1:] if arg.startswith("@") else arg)
        if domain is None:
            return S501_ETRN_SYNTAX
        if not self.relay.etrn_limiter.allow(self.session.peer_ip):
            return s458_too_many(arg)
        if not self.relay.is_customer(domain):
            return s459_not_allowed(arg, "we hold no mail for it")
        if not self._may_ask_for(domain):
            return s459_not_allowed(arg, "not for this client")
        return None

    def _may_ask_for(self, domain: str) -> bool:
        """True when this client may ETRN `domain`."""
        if self.session.trusted or self._user_owns(domain):
            return True
        networks = self.relay.etrn_networks
        return not networks or in_networks(self.session.peer_ip, networks)

    def _user_owns(self, domain: str) -> bool:
        """True when the authenticated user was granted `domain`."""
        if not self.session.authenticated or self.relay.credentials is None:
            return False
        granted = self.relay.credentials.domains_of(self.session.authenticated)
        return any(domain_matches(domain, pattern) for pattern in granted)

    # -- AUTH -----------------------------------------------------------------

    def auth_supported(self) -> bool:
        """A credentials file makes AUTH, and MAIL's AUTH= (RFC 4954 5), part of the server."""
        return self.relay.credentials is not None

    def _auth_offered(self) -> bool:
        """AUTH only with a credentials file, and while some mechanism is allowed."""
        return (self.relay.credentials is not None and not self.session.authenticated
                and bool(self._mechanisms()))

    def _mechanisms(self) -> list[str]:
        """PLAIN and LOGIN over TLS or from loopback; CRAM-MD5 for users who have it."""
        credentials = self.relay.credentials
        offered = list(A.MECHANISMS) if self._private_channel() else []
        if credentials is not None and credentials.offers_cram_md5():
            offered.append(A.CRAM_MD5)
        return offered

    def _private_channel(self) -> bool:
        """True over TLS or from loopback: a password may be sent."""
        return self.session.tls or A.is_loopback(self.session.peer_ip)

    async def smtp_AUTH(self, arg: str) -> None:
        """AUTH PLAIN|LOGIN [initial-response] (RFC 4954)."""
        refusal = self._auth_refusal()
        if refusal is not None:
            return self.reply(refusal)
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:
            return self.reply(S.S501_SYNTAX)
        if mechanism.upper() not in self._mechanisms():
            return self.reply(A.S538_NEEDS_TLS if mechanism.upper() in A.MECHANISMS
                              else A.S504_UNKNOWN_MECHANISM)
        result = await A.read_credentials(self._challenge, mechanism, initial.strip(),
                                          self.config.hostname)
        if result == A.S535_BAD_CREDENTIALS:  # PLAIN for another identity
            return self._auth_failed(mechanism, "(authorization identity not allowed)")
        if isinstance(result, Reply):
            return self.reply(result)
        credentials = self.relay.credentials
        assert credentials is not None
        if isinstance(result, A.CramResponse):
            user = result.user
            identity = credentials.check_cram_md5(user, result.challenge, result.digest)
        else:
            user, password = result
            identity = await asyncio.to_thread(credentials.check, user, password)
        if identity is None:
            return self._auth_failed(mechanism, f"for {user!r}")
        self.relay.statistics["auth_ok"] += 1
        self.authenticated(identity.user)
        self.reply(A.S235_AUTHENTICATED)

    def _auth_failed(self, mechanism: str, what: str) -> None:
        """Count, log and refuse a failed authentication (535 5.7.8)."""
        self.relay.statistics["auth_failed"] += 1
        log.warning("AUTH %s failed %s from %s", mechanism.upper(), what, self.session.peer_ip)
        self.reply(A.S535_BAD_CREDENTIALS)

    def _auth_refusal(self) -> Reply | None:
        """The reply refusing AUTH now, or None."""
        if self.relay.credentials is None:
            return A.S502_AUTH_UNAVAILABLE
        if not self.session.helo:
            return S.S503_HELO_FIRST
        if self.session.authenticated:
            return A.S503_ALREADY_AUTHENTICATED
        if self.transaction is not None:
            return A.S503_AUTH_IN_TRANSACTION
        return None

    async def _challenge(self, text: str) -> str:
        """Send `334 text` and read the client's response line."""
        self._outbox.add(f"334 {text}\r\n".encode("ascii"))
        await self.flush()
        line = await self._reader.read_line(A.AUTH_LINE_LIMIT)
        return line.decode("ascii", "replace")

    # -- ATRN -----------------------------------------------------------------

    async def smtp_ATRN(self, arg: str) -> None:
        """ATRN: reverse the connection and deliver the customer's mail (RFC 2645)."""
        patterns = self._atrn_patterns(arg)
        if isinstance(patterns, Reply):
            return self.reply(patterns)
        if self.relay.pending(patterns) == 0:
            return self.reply(S453_NO_MAIL)
        if self._reader.buffered:
            return self.reply(S503_ATRN_PIPELINED)
        self.reply(S250_REVERSING)
        await self.flush()
        self.relay.statistics["atrn"] += 1
        await self._reverse(patterns)

    def _atrn_patterns(self, arg: str) -> list[str] | Reply:
        """The domain patterns an ATRN asks for, or the reply refusing it."""
        if self.relay.credentials is None or self.relay.deliver_over is None:
            return S.S500_UNKNOWN_COMMAND
        if not self.session.helo:
            return S.S503_HELO_FIRST
        if not self.session.authenticated:
            return A.S530_AUTH_REQUIRED
        if self.transaction is not None:
            return S503_IN_TRANSACTION
        granted = self.relay.credentials.domains_of(self.session.authenticated)
        if arg:
            domains = [ascii_domain(d.strip()) for d in arg.split(",")]
            if None in domains:
                return S501_ATRN_SYNTAX
            patterns = self._own_patterns(domains, granted)  # type: ignore[arg-type]
        else:
            patterns = [p for p in granted if self.relay.is_customer(p.lstrip("."))] \
                or s450_refused("(no domains)")
        if isinstance(patterns, Reply):
            return patterns
        if not self.relay.atrn_limiter.allow(self.session.peer_ip):
            return S451_ATRN_LATER
        return patterns

    def _own_patterns(self, domains: list[str], granted: tuple[str, ...]
                      ) -> list[str] | Reply:
        """The held-mail patterns for the named domains, if all are the user's."""
        patterns = []
        for domain in domains:
            if not (self.relay.is_customer(domain) and self._user_owns(domain)):
                return s450_refused(domain)
            patterns.append("." + domain if "." + domain in granted else domain)
        return patterns

    async def _reverse(self, patterns: list[str]) -> None:
        """Be the client on this connection: EHLO, the held mail, QUIT; then hang up."""
        stream = self._reader.stream
        peer = Peer(self.session.helo, self.session.peer_ip, 0)
        smtp = SmtpSession(stream, self._outbox.writer, peer,  # type: ignore[arg-type]
                           command_timeout=self.relay.command_timeout)
        self.close_after_reply()
        try:
            await smtp.handshake(self.config.hostname, self.relay.greeting_timeout)
            if "BATCH" not in self.client_features:  # maybe a proxy: plain SMTP
                smtp.extensions.pop("XTIDEPOST", None)
            assert self.relay.deliver_over is not None
            count = await self.relay.deliver_over(patterns, smtp)
            log.info("ATRN %s by %s: %d recipients delivered over the reversed connection",
                     ",".join(patterns), self.session.authenticated, count)
        except Exception as exc:  # the customer went away or misbehaved
            log.info("ATRN for %s ended early: %s", self.session.authenticated, exc)
        finally:
            await smtp.quit()



