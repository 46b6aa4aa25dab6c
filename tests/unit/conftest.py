"""Fixtures shared by the unit tests of the queue commands (queue_spool.py)."""

from queue_spool import queue_spool  # noqa: F401 - a fixture
