"""The mail log's line format: one event, one line, the queue id first.

Every event in the life of a message is logged as

    QUEUEID: event key=value, key=value, ...

through the standard `logging` module (the handler adds the timestamp, the
process and the level; cli/logsetup.py).  Lines about no queued message
(an SMTP rejection before DATA, a refused connection) use `NOQUEUE` in
place of the queue id, as Postfix does, so that `grep QUEUEID` shows a
message's whole life and `grep NOQUEUE` every refusal.  The event names and
their keys are listed in docs/LOGGING.md; admins write scripts on them, so
a change there is a change of interface.

Values are written as given, except that a value holding a space, a comma
or an equals sign, or nothing at all, is double-quoted (with `\\"` and
`\\\\` escaped), and control characters are replaced by `?`: a client's
HELO name or address cannot forge a second line or a second key.
"""

from __future__ import annotations

import logging
from typing import Any

NOQUEUE = "NOQUEUE"
_NEEDS_QUOTES = frozenset(' ,="\\')


def quote(value: Any) -> str:
    """One value as the log writes it: bare when safe, else double-quoted."""
    text = str(value)
    if not text.isprintable():  # the per-character pass only when needed: one per event
        text = "".join(c if c.isprintable() else "?" for c in text)
    if text and not _NEEDS_QUOTES.intersection(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(queue_id: str, event: str, **fields: Any) -> str:
    """`QUEUEID: event key=value, ...`; keys with the value None are left out.

    Keyword names become keys with `_` as `-` (`message_id` is `message-id`);
    a trailing `_` avoids a Python keyword (`from_` is `from`).
    """
    pairs = ", ".join(f"{key.strip('_').replace('_', '-')}={quote(value)}"
                      for key, value in fields.items() if value is not None)
    return f"{queue_id or NOQUEUE}: {event}" + (f" {pairs}" if pairs else "")


def event(logger: logging.Logger, queue_id: str, name: str, *, level: int = logging.INFO,
          **fields: Any) -> None:
    """Log one event of a message (or NOQUEUE) in the format above."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", line(queue_id, name, **fields))
