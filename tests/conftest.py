"""Suite-wide pytest set-up: markers only.

Process fixtures (unbound, smtp-sink, a running `tidepost serve`) live in
tests/integration/conftest.py; tests/crash/conftest.py re-exports them.
"""


def pytest_configure(config):
    """Register the markers used below tests/ besides those in pyproject.toml."""
    config.addinivalue_line(
        "markers", "crash: kills tidepost processes at random moments and checks the queue")
