"""Run windows and batching rules, against chosen moments (no real time)."""

from datetime import datetime

import pytest

from tidepost.config.windows import Schedule, ScheduleError, batch_due, parse_rule

OFFICE = Schedule.parse(("Mon-Fri 08:00-18:00 every 15m", "00:00-06:00 every 3h", "every 1h"))


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def next_run(schedule: Schedule, text: str) -> str:
    return datetime.fromtimestamp(schedule.next_run(at(text))).isoformat(timespec="minutes")


def test_office_hours_every_15_minutes():
    assert next_run(OFFICE, "2026-11-23T09:07") == "2026-11-23T09:15"  # a Monday
    assert next_run(OFFICE, "2026-11-23T09:15") == "2026-11-23T09:30"


def test_evenings_hourly_and_nights_every_3_hours():
    assert next_run(OFFICE, "2026-11-23T18:00") == "2026-11-23T19:00"
    assert next_run(OFFICE, "2026-11-23T23:30") == "2026-11-24T00:00"
    assert next_run(OFFICE, "2026-11-24T00:00") == "2026-11-24T03:00"
    assert next_run(OFFICE, "2026-11-24T05:10") == "2026-11-24T06:00"  # hourly resumes


def test_weekend_is_hourly_all_day():
    assert next_run(OFFICE, "2026-11-28T09:07") == "2026-11-28T10:00"  # a Saturday


def test_window_crossing_midnight():
    late = Schedule.parse(("Fri 22:00-02:00 every 30m",))
    assert next_run(late, "2026-11-27T21:00") == "2026-11-27T22:00"
    assert next_run(late, "2026-11-28T01:10") == "2026-11-28T01:30"  # Saturday, from Friday
    assert next_run(late, "2026-11-28T01:30") == "2026-12-04T22:00"  # next Friday


def test_bad_rules_are_refused():
    for text in ("sometimes", "Mon-Fry every 1h", "25:00-26:00 every 1h", "every 0m",
                 "08:00-08:00 every 1h"):
        with pytest.raises(ScheduleError):
            parse_rule(text)


def test_batching_rules():
    assert not batch_due(waiting=4, oldest_wait=10, batch_messages=5, batch_age=600)
    assert batch_due(waiting=5, oldest_wait=10, batch_messages=5, batch_age=600)
    assert batch_due(waiting=1, oldest_wait=600, batch_messages=5, batch_age=600)
    assert not batch_due(waiting=0, oldest_wait=9999, batch_messages=0, batch_age=600)
    assert not batch_due(waiting=100, oldest_wait=9999, batch_messages=0, batch_age=0)
