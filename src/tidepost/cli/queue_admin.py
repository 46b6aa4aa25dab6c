"""Queue administration: `tidepost queue show|hold|release|requeue|delete`.

- `show ID...`: the envelope, every recipient with its state, attempts and
  last error, and the headers (`--body`: the whole message), as postcat -q.
- `hold`: the messages' queued recipients become HELD (postsuper -h): no
  runner claims them, whatever their route, until `release` (postsuper -H)
  makes them due at once.  A route hold still applies after a release.
- `requeue`: queued recipients become due now (attempts and errors kept).
- `delete`: the recipients leave the queue, and a message with none left
  goes with its body (postsuper -d).  In-flight recipients are deleted too,
  as Postfix does: the delivery under way may still reach its next hop,
  and its outcome is then discarded.

Each command names messages by queue id, or takes `--all` narrowed by the
listing's filters (`delete --all --domain spam.example`).  Each is one
transaction in the queue, so a command killed midway changed all or
nothing; it is safe beside the daemon and a `tidepost flush`, since a claim
never hands out a HELD or deleted recipient.  A running daemon is told of
every change through its control socket at once (it reschedules released
and requeued recipients and forgets held and deleted ones), and finds them
in the queue's change log within its poll interval anyway.
Every change is logged (docs/LOGGING.md): component `admin`, events
held/released/requeued/deleted, with `by` (the user) and `nrcpt`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import sys
import time

from tidepost import eventlog
from tidepost.cli.logsetup import setup_logging
from tidepost.cli.queue_filters import Filters, read_view, selection_for
from tidepost.cli.queue_list import many, quiet_stdout
from tidepost.cli.queue_view import QueueView, span
from tidepost.config.schema import Config
from tidepost.control.client import request
from tidepost.queue.backend import QueueBackend, open_configured_queue
from tidepost.model import RecipientState
from tidepost.queue.selection import EVERY_STATE, UNDELIVERED, Changed, Condition, Selection
from tidepost.submission.headers import header_section

log = logging.getLogger("tidepost.admin")

EVENTS = {"hold": "held", "release": "released", "requeue": "requeued", "delete": "deleted"}
NOTHING_TO_DO = {"hold": "no queued recipient to hold (in flight or held already)",
                 "release": "no held recipient", "requeue": "no queued recipient to requeue "
                 "(in flight or held)", "delete": "no undelivered recipient"}
EX_NOTFOUND = 1


def admin_user() -> str:
    """The name of the user running the command (the real uid's), for the log."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


async def change(config: Config, action: str, filters: Filters, by: str = "") -> int:
    """Apply one admin change in one transaction, log it, tell the daemon; exit status.

    `by` names the user in the log (admin_user() when empty): the caller
    takes it before it may have become the spool's account.
    """
    setup_logging(config)
    queue = open_configured_queue(config)
    try:
        view = await read_view(queue, config)
        selection = await selection_for(queue, view, filters)
        changed = await _apply(queue, action, selection)
        missing = [i for i in filters.queue_ids or () if i not in {c.queue_id for c in changed}]
        unknown = [i for i in missing if await queue.message_info(i) is None]
    finally:
        await queue.close()
    user = by or admin_user()
    for item in changed:
        eventlog.event(log, item.queue_id, EVENTS[action], by=user, nrcpt=item.recipients)
        if item.removed:  # the message's last line, as after its last delivery
            eventlog.event(log, item.queue_id, "removed")
    if changed:  # the daemon reschedules or forgets them at once
        request(config.spool_path, "wake", timeout=5.0)  # None: no daemon; it loads at start
    _report(action, changed, [i for i in missing if i not in unknown], unknown)
    return EX_NOTFOUND if unknown else 0


async def _apply(queue: QueueBackend, action: str, selection: Selection) -> list[Changed]:
    """The queue call for `action`."""
    method = {"hold": queue.hold_recipients, "release": queue.release_recipients,
              "requeue": queue.requeue_recipients, "delete": queue.delete_recipients}[action]
    return await method(selection, time.time())


def _report(action: str, changed: list[Changed], idle: list[str], unknown: list[str]) -> None:
    """What was done, and which named messages were not changed, and why."""
    recipients = sum(c.recipients for c in changed)
    print(f"{EVENTS[action]} {many(recipients, 'recipient')} of "
          f"{many(len(changed), 'message')}")
    removed = sum(1 for c in changed if c.removed)
    if action == "delete" and removed:
        print(f"{many(removed, 'message')} left the queue")
    for queue_id in idle:
        print(f"{queue_id}: {NOTHING_TO_DO[action]}")
    for queue_id in unknown:
        print(f"tidepost queue {action}: {queue_id}: no such message", file=sys.stderr)


async def show_messages(config: Config, queue_ids: list[str], body: bool) -> int:
    """Print each named message; exit 1 when one is not in the queue."""
    queue = open_configured_queue(config)
    status = 0
    try:
        view = await read_view(queue, config)
        for number, queue_id in enumerate(queue_ids):
            if number:
                print()
            if not await _show_one(queue, view, queue_id, body):
                print(f"tidepost queue show: {queue_id}: no such message", file=sys.stderr)
                status = EX_NOTFOUND
    except BrokenPipeError:  # `tidepost queue show ID --body | less`, quit early
        quiet_stdout()
    finally:
        await queue.close()
    return status


async def _show_one(queue: QueueBackend, view: QueueView, queue_id: str, body: bool) -> bool:
    """Envelope, recipients and headers (or the whole message) of one message."""
    info = await queue.message_info(queue_id)
    if info is None:
        return False
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(info.arrival))
    print(f"queue id:   {info.queue_id}")
    print(f"arrival:    {when} ({span(view.now - info.arrival)} ago)")
    print(f"size:       {info.size} bytes, BODY={info.body_type.value}"
          f"{', SMTPUTF8' if info.smtputf8 else ''}"
          f"{', delay warning sent' if info.warned else ''}")
    print(f"sender:     <{info.sender}>")
    selection = Selection((Condition(EVERY_STATE),), queue_ids=(queue_id,))
    async with contextlib.aclosing(queue.select(selection)) as rows:
        async for row in rows:
            undelivered = RecipientState(row.state) in UNDELIVERED
            state = view.state_of(row)[1] if undelivered else row.state
            route = view.route_of(row.domain, row.size)
            print(f"recipient:  <{row.recipient}>  route {route}, {state}, "
                  f"{row.attempts} attempts" + (f", next try {view.clock(row.next_try)}"
                                                if row.state == "queued" else ""))
            if row.last_error:
                print(f"            last error: {row.last_error}")
    message = await queue.load_body(info.message_id)
    text = (message if body else header_section(message)).decode("utf-8", "replace")
    print("-- message" if body else "-- headers")
    sys.stdout.write(text.replace("\r\n", "\n"))
    sys.stdout.flush()
    return True
