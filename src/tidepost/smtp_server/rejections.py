"""The mail log's `reject` event: every refusal the SMTP server gives.

`log_reject(command, ip, helo, reply, sender=None, recipient=None)` writes

    NOQUEUE: reject command=RCPT, client=laptop[192.0.2.7], helo=laptop,
    from=<a@b.example>, to=<c@d.example>, reply="550 5.7.1 Relaying denied"

through `tidepost.eventlog` on the `tidepost.smtp_server.reject` logger
(component `smtpd`, docs/LOGGING.md; cli/logsetup.py names components).
Refused mail is never queued, so the queue id is always NOQUEUE.  `client`
is the HELO name (or `unknown`) and the address in brackets, as in the
Received header: no DNS is asked.  Values the client chose are written as
the log quotes them (eventlog.quote), so a hostile HELO or address cannot
forge a line or a key.
"""

from __future__ import annotations

import logging

from tidepost.eventlog import NOQUEUE, event
from tidepost.smtp_server.replies import Reply

log = logging.getLogger("tidepost.smtp_server.reject")

MAX_LOGGED = 300  # characters of a client-chosen value kept in the log


def log_reject(command: str, ip: str, helo: str, reply: Reply, *,
               sender: str | None = None, recipient: str | None = None) -> None:
    """One `reject` line for a refusal given to the client at `ip`."""
    name = helo[:MAX_LOGGED] or "unknown"
    client = f"{name}[{ip}]" if ip else "local"
    event(log, NOQUEUE, "reject", command=command, client=client,
          helo=helo[:MAX_LOGGED] or None, from_=_cut(sender), to=_cut(recipient),
          reply=reply.line())


def path_word(arg: str) -> str:
    """The path a MAIL or RCPT argument names (`FROM:<a@b> SIZE=1` -> `<a@b>`)."""
    words = arg.partition(":")[2].split()
    return words[0] if words else ""


def _cut(value: str | None) -> str | None:
    """A client-chosen value, shortened for the log."""
    return None if value is None else value[:MAX_LOGGED]
