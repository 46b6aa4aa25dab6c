"""Who gets a connection slot: the totals, a reserve, per-address limits.

`Admission(limits, in_relay_networks)` decides, with no I/O, whether a new
TCP connection may have a conversation (`admit(ip)` returns a `Slot`, or
the 421 `Reply` to answer at once), and keeps the counts (`release(slot)`
when the conversation ends).  The rules, so that no flood from untrusted
addresses can lock a site's own LAN or its customers out (issue 8):

- at most `smtp.max_connections` conversations in all;
- `smtp.reserved_connections` of them only for clients entitled to the
  reserve: addresses in `smtp.relay_networks`, and addresses that passed
  SMTP AUTH within the last `AUTH_MEMORY` seconds (`authenticated(slot)`
  also moves that connection into the reserve, freeing its untrusted slot);
  everyone else shares the other max_connections - reserved_connections;
- untrusted addresses also get at most `smtp.max_connections_per_client`
  conversations at once and `smtp.max_connection_rate` new connections per
  minute (anvil-style; every attempt counts, refused or not, so a client
  that hammers a full server stays refused).  Entitled clients are exempt,
  as Postfix exempts $mynetworks (smtpd_client_event_limit_exceptions).

Refusals are `421 4.7.0`; which limit was hit is in the reply text.
Config keys read: smtp.max_connections, smtp.reserved_connections,
smtp.max_connections_per_client, smtp.max_connection_rate.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from dataclasses import dataclass
from typing import Callable

from tidepost.config.schema import SmtpServerConfig
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.ratelimit import RateLimiter
from tidepost.smtp_server.replies import Reply

AUTH_MEMORY = 3600.0      # seconds an address that passed AUTH stays entitled to the reserve
RATE_WINDOW = 60.0        # seconds over which smtp.max_connection_rate counts
MAX_REMEMBERED = 10000    # authenticated addresses remembered before expired ones go


@dataclass(frozen=True, slots=True)
class Slot:
    """One admitted connection: its client address and the pool it counts in."""

    ip: str
    reserved: bool  # counts in the reserve (relay network or authenticated)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """Connections now, by pool."""

    active: int
    reserved: int
    untrusted: int


class Admission:
    """Connection slots for one SMTP server (all its listeners)."""

    def __init__(self, limits: SmtpServerConfig, in_relay_networks: Callable[[str], bool],
                 now: Callable[[], float] | None = None):
        self._limits = limits
        self._in_relay_networks = in_relay_networks
        self._now = now or time.monotonic
        self._rate = RateLimiter(limits.max_connection_rate, RATE_WINDOW, self._now)
        self._authenticated: dict[str, float] = {}   # ip -> entitled until (monotonic)
        self._per_client: Tally[str] = Tally()        # untrusted conversations per address
        self._reserved = 0
        self._untrusted = 0

    @property
    def untrusted_capacity(self) -> int:
        """Conversations untrusted clients may hold together."""
        return max(0, self._limits.max_connections - self._limits.reserved_connections)

    def admit(self, ip: str) -> Slot | Reply:
        """A slot for a new connection from `ip`, or the 421 refusing it."""
        if self._reserved + self._untrusted >= self._limits.max_connections:
            return S.S421_TOO_MANY_CONNECTIONS
        if self.entitled(ip):
            self._reserved += 1
            return Slot(ip, reserved=True)
        refusal = self._untrusted_refusal(ip)
        if refusal is not None:
            return refusal
        self._untrusted += 1
        self._per_client[ip] += 1
        return Slot(ip, reserved=False)

    def _untrusted_refusal(self, ip: str) -> Reply | None:
        """Why an untrusted client may not have another conversation now, if so."""
        if self._limits.max_connection_rate and not self._rate.allow(ip):
            return S.S421_CONNECTION_RATE
        if self._per_client[ip] >= self._limits.max_connections_per_client:
            return S.S421_TOO_MANY_FROM_CLIENT
        if self._untrusted >= self.untrusted_capacity:
            return S.S421_TOO_MANY_CONNECTIONS
        return None

    def entitled(self, ip: str) -> bool:
        """True for relay networks and recently authenticated addresses."""
        if self._in_relay_networks(ip):
            return True
        until = self._authenticated.get(ip)
        return until is not None and until > self._now()

    def authenticated(self, slot: Slot) -> Slot:
        """The client of `slot` passed AUTH: remember it, move the slot to the reserve."""
        if len(self._authenticated) >= MAX_REMEMBERED:
            now = self._now()
            self._authenticated = {a: t for a, t in self._authenticated.items() if t > now}
        self._authenticated[slot.ip] = self._now() + AUTH_MEMORY
        if slot.reserved:
            return slot
        self.release(slot)
        self._reserved += 1
        return Slot(slot.ip, reserved=True)

    def release(self, slot: Slot) -> None:
        """The conversation of `slot` has ended."""
        if slot.reserved:
            self._reserved -= 1
            return
        self._untrusted -= 1
        self._per_client[slot.ip] -= 1
        if not self._per_client[slot.ip]:
            del self._per_client[slot.ip]

    def statistics(self) -> AdmissionStatistics:
        """Conversations now, in all and by pool."""
        return AdmissionStatistics(self._reserved + self._untrusted, self._reserved,
                                   self._untrusted)
