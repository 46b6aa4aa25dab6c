"""Time-of-day run windows and batching rules for on-demand routes.

A route with a `schedule` does not send mail the moment it arrives: its
mail waits, and queue runs happen at the times the schedule gives, so a
site decides how often its link is brought up.  A schedule is a list of
rules, the first rule whose window contains the moment applies:

    "Mon-Fri 08:00-18:00 every 15m"   weekdays in office hours, every 15 minutes
    "00:00-06:00 every 3h"            every night, every 3 hours
    "every 1h"                        the rest of the time, hourly

Run times are aligned to the start of the window (08:00, 08:15, ...; a
rule without a window is aligned to midnight).  Days: Mon Tue Wed Thu Fri
Sat Sun, a range `Mon-Fri` or a list `Sat,Sun`.  A window may cross
midnight (`22:00-02:00`).  Times are local time.

A batching rule (`batch_messages`, `batch_age`) starts a run early when
that many messages wait, or when the oldest has waited that long.

Pure policy: `Schedule.next_run(after)` and `batch_due(...)` take times and
return times; the manager does the waiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_RULE = re.compile(
    r"\s*(?:(?P<days>[A-Za-z]{3}(?:\s*[-,]\s*[A-Za-z]{3})*)\s+)?"
    r"(?:(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+)?"
    r"every\s+(?P<every>\d+)\s*(?P<unit>[mhd])\s*\Z", re.IGNORECASE)
MAX_LOOKAHEAD_MINUTES = 8 * 24 * 60


class ScheduleError(ValueError):
    """A schedule rule that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class Rule:
    """One `[DAYS] [HH:MM-HH:MM] every N` rule."""

    days: frozenset[int]   # 0 = Monday
    start: int             # minutes after midnight
    end: int               # minutes after midnight; end <= start crosses midnight
    every: int             # minutes
    whole_day: bool

    def contains(self, moment: datetime) -> bool:
        """True when `moment` falls inside this rule's window."""
        minute = moment.hour * 60 + moment.minute
        if self.whole_day:
            return moment.weekday() in self.days
        if self.start < self.end:
            return moment.weekday() in self.days and self.start <= minute < self.end
        if minute >= self.start:  # before midnight, in a window that crosses it
            return moment.weekday() in self.days
        return (moment.weekday() - 1) % 7 in self.days and minute < self.end

    def is_run_time(self, moment: datetime) -> bool:
        """True when a run falls on this minute under this rule."""
        minute = moment.hour * 60 + moment.minute
        since_start = (minute - self.start) % (24 * 60)
        return since_start % self.every == 0


def parse_rule(text: str) -> Rule:
    """Parse one schedule rule or raise ScheduleError."""
    match = _RULE.match(text)
    if not match:
        raise ScheduleError(f"{text!r} is not '[DAYS] [HH:MM-HH:MM] every N(m|h|d)'")
    every = int(match["every"]) * {"m": 1, "h": 60, "d": 1440}[match["unit"].lower()]
    if every < 1:
        raise ScheduleError(f"{text!r}: the interval must be at least one minute")
    days = _parse_days(match["days"]) if match["days"] else frozenset(range(7))
    if match["start"] is None:
        return Rule(days, 0, 0, every, True)
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start == end:
        raise ScheduleError(f"{text!r}: the window is empty")
    return Rule(days, start, end, every, False)


def _minutes(text: str) -> int:
    """HH:MM as minutes after midnight."""
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 24 or minutes > 59 or hours * 60 + minutes > 24 * 60:
        raise ScheduleError(f"{text!r} is not a time of day")
    return (hours * 60 + minutes) % (24 * 60)


def _parse_days(text: str) -> frozenset[int]:
    """`Mon-Fri`, `Sat,Sun` or `Mon` as weekday numbers."""
    days: set[int] = set()
    for part in re.split(r"\s*,\s*", text.lower()):
        ends = [p.strip() for p in part.split("-")]
        if any(end not in DAYS for end in ends) or len(ends) > 2:
            raise ScheduleError(f"{text!r}: days are Mon Tue Wed Thu Fri Sat Sun")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


@dataclass(frozen=True)
class Schedule:
    """An ordered list of rules; the first whose window contains a moment applies."""

    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, texts: tuple[str, ...]) -> Schedule:
        """Parse every rule of a route's `schedule` key."""
        return cls(tuple(parse_rule(text) for text in texts))

    def rule_at(self, moment: datetime) -> Rule | None:
        """The rule in force at `moment`, if any."""
        return next((rule for rule in self.rules if rule.contains(moment)), None)

    def next_run(self, after: float) -> float | None:
        """The first run time strictly after `after` (Unix time), or None if never."""
        moment = datetime.fromtimestamp(after).replace(second=0, microsecond=0)
        for _ in range(MAX_LOOKAHEAD_MINUTES):
            moment += timedelta(minutes=1)
            rule = self.rule_at(moment)
            if rule is not None and rule.is_run_time(moment):
                return moment.timestamp()
        return None


def batch_due(waiting: int, oldest_wait: float, batch_messages: int, batch_age: float) -> bool:
    """True when a batching rule asks for a run now (0 disables a rule)."""
    if batch_messages and waiting >= batch_messages:
        return True
    return bool(batch_age) and waiting > 0 and oldest_wait >= batch_age
