"""Retry policy: when to try again, when to warn, when to give up.

Intervals double from `queue.min_backoff` up to `queue.max_backoff` with each
failed attempt.  Only real delivery attempts count: time a recipient spends on
a held route is not an attempt, and a recipient is never expired without an
attempt (expiry is judged when an attempt fails, as Postfix does), so a site
offline for a week does not bounce mail it never tried.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidepost.config.schema import QueueConfig


@dataclass(frozen=True)
class Backoff:
    """Retry intervals, delay-warning and lifetime limits in seconds."""

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0

    @classmethod
    def from_config(cls, queue: QueueConfig) -> Backoff:
        """Build from the [queue] section."""
        return cls(queue.min_backoff, max(queue.min_backoff, queue.max_backoff),
                   queue.lifetime, queue.delay_warning)

    def interval(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        exponent = min(max(attempts - 1, 0), 32)
        return min(self.max_backoff, self.min_backoff * 2 ** exponent)

    def next_try(self, attempts: int, now: float) -> float:
        """Time of the next attempt after `attempts` failures."""
        return now + self.interval(attempts)

    def expired(self, arrival: float, now: float) -> bool:
        """True when a message has outlived the queue lifetime."""
        return now - arrival >= self.lifetime

    def warning_due(self, arrival: float, now: float) -> bool:
        """True when the sender should be told that delivery is delayed."""
        return 0 < self.delay_warning <= now - arrival
