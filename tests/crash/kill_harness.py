"""kill -9 under load: SMTP clients submit while a daemon is killed and restarted.

Shared by the crash tests (short runs) and bench/crash.py (long runs), so
that the figures in the README come from the code the suite runs.

- `Submitter`: a client thread sending messages over one reused SMTP
  connection, each with a unique token on a line of its own; it remembers
  the tokens that got a 250 (`acknowledged`) and those sent without one
  (`unsure`: the connection died, or a 4xx came).  It never sends a token
  twice: an unsure token is what a real client would retry.
- `submit_while_killing(victims, ...)`: runs the clients while each victim
  in turn is SIGKILLed at random moments and started again.  A victim is
  anything with `kill()` and `start()` (tests/integration's TidepostNode).
- `tally(...)`: from the copies found where the mail went (tokens in a
  sink's transactions or in Maildirs): lost acknowledged messages,
  duplicate transactions, and "stored but the 250 never arrived" (an
  unsure token that was stored: the client's retry would be a second copy).
"""

from __future__ import annotations

import collections
import random
import re
import smtplib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

TOKEN = re.compile(rb"^token (\S+)\r?$", re.M)
PADDING = ("x" * 76 + "\r\n") * 40  # about 3 KiB per message


class Victim(Protocol):
    """What the harness kills and restarts."""

    def kill(self) -> None: ...
    def start(self) -> object: ...


class Submitter(threading.Thread):
    """Sends messages over one reused SMTP connection until stopped; records 250s."""

    def __init__(self, port: Callable[[], int], name: str, recipients: list[str],
                 rng: random.Random, sender: str = "bob@site.test"):
        super().__init__(name=name, daemon=True)
        self.port, self.recipients, self.rng, self.sender = port, recipients, rng, sender
        self.acknowledged: dict[str, tuple[str, ...]] = {}  # token -> recipients accepted
        self.unsure: dict[str, tuple[str, ...]] = {}        # sent, no 250 seen
        self.stopping = threading.Event()

    def run(self) -> None:
        """Submit until told to stop; reconnect after every failure."""
        client, number = None, 0
        while not self.stopping.is_set():
            number += 1
            token = f"{self.name}-{number}"
            recipients = tuple(self.rng.sample(self.recipients, self.rng.choice((1, 1, 2))))
            try:
                client = client or smtplib.SMTP("127.0.0.1", self.port(),
                                                 local_hostname="client.test", timeout=10)
                refused = client.sendmail(self.sender, list(recipients), message(token))
                self.acknowledged[token] = tuple(r for r in recipients if r not in refused)
            except (OSError, smtplib.SMTPException):
                self.unsure[token] = recipients
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def message(token: str) -> bytes:
    """A ~3 KiB message carrying `token` on a line of its own."""
    return (f"From: bob@site.test\r\nSubject: crash {token}\r\n\r\n"
            f"token {token}\r\n{PADDING}").encode()


@dataclass
class KillRun:
    """What the clients saw and when the kills came."""

    clients: list[Submitter]
    kills: list[float] = field(default_factory=list)

    def acknowledged(self) -> dict[str, tuple[str, ...]]:
        """Every token that got a 250, with its accepted recipients."""
        return {t: r for c in self.clients for t, r in c.acknowledged.items()}

    def unsure(self) -> dict[str, tuple[str, ...]]:
        """Every token sent without a 250."""
        return {t: r for c in self.clients for t, r in c.unsure.items()}

    def submitted(self) -> dict[str, tuple[str, ...]]:
        """Every token ever sent, acknowledged or not."""
        return {**self.unsure(), **self.acknowledged()}


def submit_while_killing(port: Callable[[], int], victims: Iterable[Victim],
                         recipients: list[str], seed: int, kills: int, clients: int = 3,
                         pause: tuple[float, float] = (0.3, 1.0),
                         after: float = 0.5) -> KillRun:
    """Run `clients` submitters while each victim is killed `kills` times in turn.

    The clients submit to `port()` (asked at every connection).  Between
    kills a random pause in `pause` seconds; `after` seconds of undisturbed
    submission at the end.  The clients are stopped when this returns.
    """
    rng = random.Random(seed)
    run = KillRun([Submitter(port, f"c{i}", recipients, random.Random(seed + i + 1))
                   for i in range(clients)])
    for client in run.clients:
        client.start()
    try:
        for victim in victims:
            for _ in range(kills):
                time.sleep(rng.uniform(*pause))
                run.kills.append(time.time())
                victim.kill()
                victim.start()
        time.sleep(after)
    finally:
        for client in run.clients:
            client.stopping.set()
        for client in run.clients:
            client.join(30)
    return run


@dataclass(frozen=True)
class Tally:
    """What a kill run left where the mail went."""

    kills: int
    acknowledged: int           # tokens that got a 250
    lost: list[tuple[str, str]]  # (recipient, token) acknowledged but nowhere
    duplicates: int             # copies beyond the first, per (recipient, token)
    stored_without_250: int     # unsure tokens that were stored anyway
    strangers: int              # copies of tokens nobody sent (must be 0)

    def per_kill(self, count: int) -> float:
        """`count` divided by the kills (0 without kills)."""
        return count / self.kills if self.kills else 0.0

    def line(self, name: str) -> str:
        """One line for a test log or a bench table."""
        return (f"{name}: {self.kills} kills, {self.acknowledged} acknowledged, "
                f"{len(self.lost)} lost, {self.duplicates} duplicates "
                f"({self.per_kill(self.duplicates):.2f}/kill), {self.stored_without_250} "
                f"stored without a 250 ({self.per_kill(self.stored_without_250):.2f}/kill)")


def copies_of(deliveries: Iterable[tuple[Iterable[str], bytes]]) -> collections.Counter:
    """{(recipient, token): copies} from (recipients, message bytes) pairs."""
    found: collections.Counter = collections.Counter()
    for recipients, body in deliveries:
        for token in TOKEN.findall(body):
            for rcpt in recipients:
                found[(rcpt, token.decode())] += 1
    return found


def tally(run: KillRun, copies: collections.Counter) -> Tally:
    """Lost, duplicated, stored-without-250 and unknown copies of a run."""
    acked, unsure, sent = run.acknowledged(), run.unsure(), run.submitted()
    lost = [(r, t) for t, rs in acked.items() for r in rs if not copies[(r, t)]]
    stored = {t for t in unsure if any(copies[(r, t)] for r in unsure[t])}
    strangers = [k for k in copies if k[1] not in sent or k[0] not in sent[k[1]]]
    return Tally(len(run.kills), len(acked), lost,
                 sum(n - 1 for n in copies.values() if n > 1), len(stored), len(strangers))
