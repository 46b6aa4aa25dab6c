"""`tidepost queue [list]`: the queue, one line per recipient, printed as it is read.

Rows stream from the store (QueueBackend.select) in queue order and are
written at once, so the first line comes before the last row is read and
memory stays flat however long the queue is.  Columns: queue id, age,
size, sender, recipient, route, state (queue_view.py); a recipient's last
error follows on an indented line, in parentheses, as mailq does.

Width: on a terminal (or with $COLUMNS) every line fits it, 80 columns at
least: queue ids are never cut; long addresses are shortened with an
ellipsis (a recipient keeps its domain, a sender its start); in a narrow
terminal a long state is said shortly (`held (route)`: the ROUTE column
names it).  Into a pipe nothing is cut.
`--json` writes one JSON object per recipient with every value in full;
`--count` only the number of recipients selected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import TextIO

from tidepost.cli.queue_filters import Filters, read_view, selection_for
from tidepost.cli.queue_view import QueueView, span
from tidepost.config.schema import Config
from tidepost.queue.backend import QueueRow, open_configured_queue

MIN_WIDTH = 80
ELLIPSIS = "…"
ID_WIDTH, AGE_WIDTH, SIZE_WIDTH = 12, 4, 4
PIPE_SENDER, PIPE_RECIPIENT = 24, 32  # column widths when nothing is cut
BATCH = 500  # lines written at once (one system call, whatever PYTHONUNBUFFERED says)
NARROW_STATE = len("scheduled 22:00")  # the state column when room is short
GOOD_RECIPIENT = 18  # below this, states are said shortly to give recipients room


def output_width(stream: TextIO) -> int | None:
    """Columns to fit: $COLUMNS, else the terminal's (80 at least), else None (a pipe)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    if stream.isatty():
        return max(shutil.get_terminal_size().columns, MIN_WIDTH)
    return None


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[:max(width - 1, 0)] + ELLIPSIS


def shorten_address(address: str, width: int) -> str:
    """An address in `width` characters: the local part shortened first, then the domain's start."""
    if len(address) <= width:
        return address
    local, at, domain = address.rpartition("@")
    if at and width >= len(domain) + 3:
        return local[:width - len(domain) - 2] + ELLIPSIS + "@" + domain
    return ELLIPSIS + address[-(width - 1):]


def many(count: int, noun: str) -> str:
    """`1 message`, `2 messages`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def compact_state(text: str, width: int) -> str:
    """A state in `width` characters: `held (route)`, `sched Mon 22:00`, `no route`."""
    if len(text) <= width:
        return text
    if text.startswith("held (route "):
        text = "held (route)"
    elif text.startswith("scheduled "):
        text = "sched " + text.removeprefix("scheduled ")
    elif text == "queued (no route)":
        text = "no route"
    return shorten(text, width)


def size_text(size: int) -> str:
    """Bytes in at most four characters: 812, 4.2K, 310K, 1.5M, 25M."""
    if size < 1024:
        return str(size)
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}" if value < 9.95 else f"{int(value)}{unit}"
    return str(size)


@dataclass
class Layout:
    """Column widths of the table for one output width."""

    width: int | None
    route: int
    state: int
    sender: int = PIPE_SENDER
    recipient: int = PIPE_RECIPIENT

    def __post_init__(self) -> None:
        if self.width is not None:
            self._share()
            if self.recipient < GOOD_RECIPIENT and self.state > NARROW_STATE:
                self.state = NARROW_STATE
                self._share()
        self.template = (f"%-{ID_WIDTH}s %{AGE_WIDTH}s %{SIZE_WIDTH}s "
                         f"%-{self.sender}s %-{self.recipient}s %-{self.route}s %s")

    def _share(self) -> None:
        """Give the addresses what the other columns leave, the recipient the most."""
        fixed = ID_WIDTH + AGE_WIDTH + SIZE_WIDTH + self.route + self.state + 6
        room = max(self.width - fixed - 1, 20)
        self.sender = max(room // 3, 8)
        self.recipient = room - self.sender

    def line(self, queue_id: str, age: str, size: str, sender: str, recipient: str,
             route: str, state: str) -> str:
        """One table line, shortened where the width asks for it (a hundred thousand a second)."""
        if self.width is not None:
            if len(sender) > self.sender:
                sender = shorten(sender, self.sender)
            if len(recipient) > self.recipient:
                recipient = shorten_address(recipient, self.recipient)
            if len(route) > self.route:
                route = shorten(route, self.route)
            if len(state) > self.state:
                state = compact_state(state, self.state)
        return self.template % (queue_id, age, size, sender, recipient, route, state)

    def error_line(self, error: str) -> str:
        """The indented `(last error)` line under a recipient."""
        indent = " " * (ID_WIDTH + AGE_WIDTH + SIZE_WIDTH + 3)
        text = f"({error})"
        return indent + (shorten(text, self.width - len(indent)) if self.width else text)


class Writer:
    """Writes lines in batches, the first one at once."""

    def __init__(self, out: TextIO):
        self.out = out
        self._lines: list[str] = []
        self._written = False

    def add(self, line: str) -> None:
        """Queue one line; write the batch when it is full, or if it is the first."""
        self._lines.append(line)
        if len(self._lines) >= BATCH or not self._written:
            self.flush()

    def flush(self) -> None:
        """Write what is queued, and push it out."""
        if self._lines:
            self.out.write("\n".join(self._lines) + "\n")
            self._lines.clear()
        self.out.flush()
        self._written = True


class TableWriter(Writer):
    """Writes rows as table lines, counting messages and recipients."""

    def __init__(self, view: QueueView, out: TextIO, width: int | None):
        super().__init__(out)
        routes = max(len(name) for name in view.router.route_names())
        self.layout = Layout(width, min(max(routes, len("ROUTE")), 12), view.state_width())
        self.view = view
        self.recipients = self.messages = 0
        self._last_id = ""

    def row(self, row: QueueRow) -> None:
        """Print one recipient (the header before the first)."""
        if not self.recipients:
            self._lines.append(self.layout.line("ID", "AGE", "SIZE", "SENDER", "RECIPIENT",
                                                "ROUTE", "STATE"))
        self.recipients += 1
        if row.queue_id != self._last_id:
            self.messages += 1
            self._last_id = row.queue_id
        route = self.view.route_of(row.domain, row.size)
        _, state = self.view.state_of(row, route)
        line = self.layout.line(row.queue_id, span(self.view.now - row.arrival),
                                size_text(row.size), row.sender or "<>", row.recipient, route,
                                state)
        if row.last_error:
            line += "\n" + self.layout.error_line(row.last_error)
        self.add(line)

    def finish(self, everything: bool) -> None:
        """The closing line: totals, or that nothing is queued."""
        if self.recipients:
            self.add(f"-- {many(self.messages, 'message')}, {many(self.recipients, 'recipient')}")
        else:
            self.add("Mail queue is empty" if everything else "No queued recipient matches")
        self.flush()


class JsonWriter(Writer):
    """Writes one JSON object per recipient, every value in full."""

    def __init__(self, view: QueueView, out: TextIO):
        super().__init__(out)
        self.view = view

    def row(self, row: QueueRow) -> None:
        """Print one recipient as a JSON line."""
        route = self.view.route_of(row.domain, row.size)
        shown, text = self.view.state_of(row, route)
        self.add(json.dumps({
            "queue_id": row.queue_id, "recipient": row.recipient, "sender": row.sender,
            "arrival": row.arrival, "size": row.size, "route": route, "state": shown.value,
            "state_text": text, "stored_state": row.state, "attempts": row.attempts,
            "next_try": row.next_try, "last_error": row.last_error,
            "recipient_id": row.recipient_id, "node": row.node}))

    def finish(self, everything: bool) -> None:
        """Nothing closes a JSON-lines stream but the last lines."""
        self.flush()


async def list_queue(config: Config, filters: Filters, as_json: bool = False,
                     count_only: bool = False, out: TextIO | None = None) -> int:
    """Print the selected recipients (or their number); exit 0."""
    out = out or sys.stdout
    queue = open_configured_queue(config)
    try:
        view = await read_view(queue, config)
        selection = await selection_for(queue, view, filters)
        if count_only:
            out.write(f"{await queue.count(selection)}\n")
            return 0
        writer = JsonWriter(view, out) if as_json else TableWriter(view, out, output_width(out))
        async with contextlib.aclosing(queue.select(selection)) as rows:
            async for row in rows:
                writer.row(row)
        writer.finish(filters.is_everything())
    except BrokenPipeError:  # `tidepost queue | head`: the reader has all it wants
        quiet_stdout()
    finally:
        await queue.close()
    return 0


def quiet_stdout() -> None:
    """Point standard output at /dev/null so that the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
