"""The minimum data rate of a DATA section: no slot held by a trickle.

`DataPace(min_rate, window, start)` cuts a DATA section into consecutive
windows of `window` seconds from `start`; each must bring at least
`min_rate * window` octets, or the client is too slow.  The first window is
the grace period (a slow start, TCP slow start included, costs nothing
before it ends).  `received(octets, now)` counts what arrived at `now` and
judges every window that ended before it; `window_end` says when the reader
must look again even if nothing arrives.  A window, not the average since
the start: a client that sent a burst first cannot then trickle on its
credit (Postfix's smtpd_min_data_rate and Exim's smtp_receive_timeout
bound the same thing in their own ways).
Pure policy: the reader passes monotonic times in.  Config keys (read by
the session): smtp.min_data_rate, smtp.data_rate_window.
"""

from __future__ import annotations


class DataPace:
    """Judges a DATA section's rate, window by window."""

    def __init__(self, min_rate: float, window: float, start: float):
        self.min_rate = min_rate
        self.window = window
        self.window_end = start + window
        self._octets = 0  # received in the current window

    def received(self, octets: int, now: float) -> bool:
        """Count `octets` arriving at `now`; False when an ended window fell short."""
        while now >= self.window_end:
            if self._octets < self.min_rate * self.window:
                return False
            self._octets = 0
            self.window_end += self.window
        self._octets += octets
        return True
