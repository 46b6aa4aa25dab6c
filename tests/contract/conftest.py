"""Fixtures of the PostgreSQL contract tests (the private server: tests/conftest.py)."""

from __future__ import annotations

import pytest

from test_queue_backend import run


@pytest.fixture
def nodes(pg_dsn):
    """A factory of PostgreSQL stores on one fresh database (as nodes), all closed at the end."""
    from tidepost.queue.postgres import PostgresQueue  # asyncpg: only where a test asks
    opened: list[PostgresQueue] = []

    def open_store(**options) -> PostgresQueue:
        store = PostgresQueue(pg_dsn, **options)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        run(store.close())
