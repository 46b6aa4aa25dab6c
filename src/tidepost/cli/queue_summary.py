"""`tidepost queue summary [--by domain|route|sender]`: the queue's shape, like qshape.

One line per recipient domain (or route, or sender), largest first, with
the number of recipients waiting and how long they have waited, in age
buckets that double: under 5 minutes, 5 to 10, 10 to 20, ... 320 to 640
minutes, 640 minutes to a day, a day or more.  A column is labelled with
its upper end (`1d+`: a day or more); `T` is the line's total, and the
TOTAL line comes first.  A destination that is stuck shows as a line
whose counts sit in the right-hand buckets.

The store does the counting (QueueBackend.tally: one grouped query), so
the summary costs one pass over the recipients, not a row each; `--by
route` groups by domain and message-size class and lets the Router name
each route.  The filters of `tidepost queue` apply.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tidepost.cli.queue_filters import Filters, read_view, selection_for
from tidepost.cli.queue_list import output_width, shorten
from tidepost.cli.queue_view import QueueView
from tidepost.config.schema import Config
from tidepost.queue.backend import open_configured_queue
from tidepost.queue.selection import Tally

MINUTE = 60.0
AGE_BOUNDS = tuple(m * MINUTE for m in (5, 10, 20, 40, 80, 160, 320, 640)) + (86400.0,)
AGE_LABELS = ("5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1d", "1d+")
NAME_MIN = 12


def bucket_counts(tallies: list[Tally], key_of) -> dict[str, list[int]]:
    """{line name: [count per age bucket]} from tallies; `key_of(tally)` names the line."""
    lines: dict[str, list[int]] = {}
    for tally in tallies:
        counts = lines.setdefault(key_of(tally), [0] * len(AGE_LABELS))
        counts[tally.age_class] += tally.recipients
    return lines


def ranked(lines: dict[str, list[int]], top: int) -> list[tuple[str, list[int]]]:
    """TOTAL, then the `top` largest lines (0: all), then one line for the rest."""
    order = sorted(lines.items(), key=lambda item: (-sum(item[1]), item[0]))
    total = [sum(column) for column in zip(*lines.values())] if lines else [0] * len(AGE_LABELS)
    shown = order if top <= 0 else order[:top]
    rest = order[len(shown):]
    result = [("TOTAL", total), *shown]
    if rest:
        result.append((f"({len(rest)} more)", [sum(c) for c in zip(*(l for _, l in rest))]))
    return result


def render(rows: list[tuple[str, list[int]]], width: int | None) -> list[str]:
    """The table's lines; names are shortened (keeping their end) to fit `width`."""
    columns = ["T", *AGE_LABELS]
    values = [[str(sum(counts)), *map(str, counts)] for _, counts in rows]
    widths = [max(len(label), *(len(v[i]) for v in values)) for i, label in enumerate(columns)]
    numbers = sum(w + 1 for w in widths)
    name_width = max(len(name) for name, _ in rows)
    if width is not None:
        name_width = max(min(name_width, width - numbers), NAME_MIN)
    lines = [" " * name_width + "".join(f" {c:>{w}}" for c, w in zip(columns, widths))]
    for (name, _), row in zip(rows, values):
        if len(name) > name_width:
            name = "…" + name[-(name_width - 1):] if name[0] != "(" else shorten(name, name_width)
        lines.append(f"{name:<{name_width}}" + "".join(f" {v:>{w}}" for v, w in zip(row, widths)))
    return lines


def line_namer(view: QueueView, by: str):
    """How a tally names its line: its domain, its sender, or its route."""
    if by == "route":
        return lambda tally: view.route_of(tally.key, view.size_in(tally.size_class))
    if by == "sender":
        return lambda tally: tally.key or "<>"
    return lambda tally: tally.key or "(no domain)"


async def summarise(config: Config, filters: Filters, by: str = "domain", top: int = 20,
                    out: TextIO | None = None) -> int:
    """Print the summary table; exit 0."""
    out = out or sys.stdout
    queue = open_configured_queue(config)
    try:
        view = await read_view(queue, config)
        selection = await selection_for(queue, view, filters)
        tallies = await queue.tally(selection, "sender" if by == "sender" else "domain",
                                    view.size_bounds if by == "route" else (), AGE_BOUNDS,
                                    view.now)
    finally:
        await queue.close()
    rows = ranked(bucket_counts(tallies, line_namer(view, by)), top)
    out.write("\n".join(render(rows, output_width(out))) + "\n")
    return 0
