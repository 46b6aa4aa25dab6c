"""Queued mail is never readable by local users, whichever command made the spool's files.

An admin's first command on a new machine is often `tidepost queue` or
`tidepost status` as root (umask 022), before `serve` ever ran: the stores
it creates must still be 0600, and a spool left world-readable by an older
version is made private again by the next start.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tidepost.control import spool
from tidepost.queue.sqlite import SqliteQueue
from tidepost.resolver.cache import DnsCache
from tidepost.clock import SystemClock
from tidepost.usage.store import UsageStore


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_stores_are_created_private_whatever_the_umask(tmp_path, umask_022):
    queue = SqliteQueue(tmp_path / "queue.sqlite")
    asyncio.run(queue.close())
    usage = UsageStore(tmp_path / "usage.sqlite")
    usage.caps()  # opens (creates) it
    usage.close()
    cache = DnsCache(tmp_path / "dns-cache.sqlite", SystemClock())
    asyncio.run(cache.get("example.org", "MX"))
    asyncio.run(cache.close())
    made = sorted(p.name for p in tmp_path.iterdir() if p.suffix.startswith(".sqlite"))
    assert made and {name: mode(tmp_path / name) for name in made} == \
        {name: 0o600 for name in made}


def test_a_start_makes_world_readable_stores_private_again(tmp_path):
    for name in ("queue.sqlite", "queue.sqlite-wal", "usage.sqlite", "dns-cache.sqlite"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)
    spool.prepare(tmp_path, None)
    assert {p.name: mode(p) for p in tmp_path.iterdir() if p.is_file()} == \
        {name: 0o600 for name in ("queue.sqlite", "queue.sqlite-wal", "usage.sqlite",
                                  "dns-cache.sqlite")}


def test_the_mail_log_file_is_created_private_whatever_the_umask(tmp_path, umask_022):
    # It names who mailed whom; made by `tidepost queue hold` or a cron
    # `flush` (umask 022) it was 0644 and every user could read it.
    import logging
    from tidepost.cli.logsetup import setup_logging
    from tidepost.config.load import parse_config
    log_file = tmp_path / "mail.log"
    config = parse_config(f'spool = "{tmp_path}"\n[log]\nfile = "{log_file}"\n', "t")
    root = logging.getLogger()
    kept = list(root.handlers), root.level
    flags = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved = {flag: getattr(logging, flag) for flag in flags}  # setup_logging turns them off
    try:
        setup_logging(config)
        logging.getLogger("tidepost.admin").warning("X: held by=root, nrcpt=1")
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in kept[0]:
            root.addHandler(handler)
        root.setLevel(kept[1])
        for flag, value in saved.items():
            setattr(logging, flag, value)
    assert "held by=root" in log_file.read_text()
    assert mode(log_file) == 0o600
