"""Suite-wide pytest set-up: markers only.

Process fixtures (unbound, smtp-sink, a running `tidepost serve`) live in
tests/integration/conftest.py; tests/crash/conftest.py re-exports them.
"""


def pytest_configure(config):
    """Register the markers used below tests/ besides those in pyproject.toml."""
    config.addinivalue_line(
        "markers", "crash: kills tidepost processes at random moments and checks the queue")


# -- PostgreSQL: one private server for the session (tidepost/testing/pgcluster.py) --

import pytest  # noqa: E402 - below the markers, with the fixtures that need it

from tidepost.testing.pgcluster import PrivateCluster, binaries  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server (initdb in a temporary folder), stopped at the end."""
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (./run-tests installs postgresql)")
    with PrivateCluster() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server):
    """The DSN of a database with nothing in it, emptied again for each test."""
    pg_server.psql("DROP DATABASE IF EXISTS contract WITH (FORCE)")
    pg_server.psql("CREATE DATABASE contract")
    return pg_server.dsn("contract")
