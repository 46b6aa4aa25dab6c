"""Accounting periods: the day and the month a moment falls in, in local time.

Links are billed by the calendar of the place that pays, so a day is a local
calendar day (`2026-12-02`) and a month a local calendar month (`2026-12`).
Pure functions of a Unix time; nothing here reads the clock.
"""

from __future__ import annotations

import time

DAY, MONTH = "day", "month"
PERIODS = (DAY, MONTH)


def day_of(moment: float) -> str:
    """The local calendar day of `moment`, as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.localtime(moment))


def month_of(moment: float) -> str:
    """The local calendar month of `moment`, as YYYY-MM."""
    return time.strftime("%Y-%m", time.localtime(moment))


def period_of(kind: str, moment: float) -> str:
    """The day or the month (`kind`) of `moment`."""
    return day_of(moment) if kind == DAY else month_of(moment)


def next_start(kind: str, moment: float) -> float:
    """The Unix time at which the day or month after `moment`'s begins."""
    parts = list(time.localtime(moment))
    if kind == DAY:
        parts[2] += 1
    else:
        parts[1] += 1
        parts[2] = 1
    parts[3:6] = [0, 0, 0]
    parts[8] = -1  # let mktime find out whether DST applies then
    return time.mktime(tuple(parts))  # mktime normalises day 32, month 13
