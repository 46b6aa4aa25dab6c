"""The exception tree of tidepost.

    TidepostError
    ├── ConfigError            bad configuration: file, line, key and reason
    ├── QueueError             the queue store failed (I/O error, corrupt)
    │   └── QueueFull          its file system is full: try again later (452 4.3.1)
    ├── AlreadyQueued          a transfer key was stored before: a repeat, not new mail
    └── DeliveryError          a delivery step failed; carries an RFC 3463 status
        ├── TempFailure        4xx, becomes Deferred
        │   ├── ConnectFailed  no TCP connection (refused, unreachable, timed out): 4.4.1
        │   └── RouteHeld      the route is held, so nothing was sent: 4.4.0
        └── PermFailure        5xx, becomes Bounced

Temporary versus permanent sits near the root because it decides everything
downstream: the SMTP reply class, the outcome, and whether a DSN is sent.
"""

from __future__ import annotations


class TidepostError(Exception):
    """Root of all tidepost errors."""


class ConfigError(TidepostError):
    """The configuration is invalid; str() names file, line, key and reason."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class QueueError(TidepostError):
    """The queue store could not do what was asked."""


class QueueFull(QueueError):
    """The queue's file system (or quota) is full; nothing was stored."""


class AlreadyQueued(TidepostError):
    """A submission repeats a transfer the queue already holds (nothing was stored).

    Not a failure: the caller acknowledges the repeat as it acknowledged the
    first copy (exactly-once receipt between tidepost nodes, maildrop pick-up).
    """

    def __init__(self, key: str, queue_id: str):
        super().__init__(f"transfer {key} was queued before as {queue_id}")
        self.key = key
        self.queue_id = queue_id


class DeliveryError(TidepostError):
    """A delivery step failed with an RFC 3463 status and a reason."""

    def __init__(self, status: str, reason: str, remote_mta: str = "", diagnostic: str = ""):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.remote_mta = remote_mta
        self.diagnostic = diagnostic  # the remote reply behind it, if one ("421 4.3.2 ...")


class TempFailure(DeliveryError):
    """Temporary failure (4.x.x): try again later."""


class PermFailure(DeliveryError):
    """Permanent failure (5.x.x): give up and bounce."""


class ConnectFailed(TempFailure):
    """No TCP connection could be opened (refused, unreachable, timed out): 4.4.1."""

    def __init__(self, reason: str):
        super().__init__("4.4.1", reason)


class RouteHeld(TempFailure):
    """The route is held: no DNS query or connection was attempted.

    Status 4.4.0 (other network or routing status, RFC 3463): the mail is
    fine and the destination may be too; only our own route is closed.
    """

    def __init__(self, route: str):
        super().__init__("4.4.0", f"route {route} is held")
        self.route = route
