"""A private PostgreSQL server for tests and benchmarks: initdb, pg_ctl, gone after.

    with PrivateCluster() as cluster:     # initdb in a temporary folder, started
        dsn = cluster.create_database("t1")
        ...
    # stopped (pg_ctl stop -m fast) and the folder removed
    cluster.crash(); cluster.restart()  # a database outage (tests/integration)

Uses the Debian `postgresql` package's binaries (/usr/lib/postgresql/N/bin)
without its service: the server listens on 127.0.0.1 at a free port, with a
Unix socket in the same folder, trust authentication, fsync on (the tests
measure durable commits).  PostgreSQL refuses to run as root, so as root the
folder is handed to the `postgres` account the package creates and the
programs run through `runuser`.  `binaries()` is None without the package,
and the tests that need a server skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_ACCOUNT = "postgres"  # created by Debian's postgresql-common


def binaries() -> Path | None:
    """The newest installed PostgreSQL bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateCluster:
    """One PostgreSQL server in a temporary folder (see module docstring)."""

    def __init__(self, settings: dict[str, str] | None = None):
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self.bin = bin_dir
        self.port = _free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tidepost-pg-"))
        self.data = self.folder / "data"
        self.settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                         "unix_socket_directories": str(self.folder), "fsync": "on",
                         "synchronous_commit": "on", "max_connections": "200",
                         **(settings or {})}
        self._as_other = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_other:
            command = ["runuser", "-u", SERVER_ACCOUNT, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PrivateCluster":
        """initdb and start the server; returns once it accepts connections."""
        if self._as_other:
            shutil.chown(self.folder, SERVER_ACCOUNT)
        self._run("initdb", "-D", str(self.data), "-U", "tidepost", "--auth=trust",
                  "-E", "UTF8", "--locale=C.UTF-8")
        self.restart()
        return self

    def crash(self) -> None:
        """Stop the server as a crash would (pg_ctl -m immediate: no checkpoint, clients cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        """Start the (stopped) server again on the same port; returns once it accepts."""
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.folder / "server.log"), "-o", options, "start")

    def dsn(self, database: str = "postgres") -> str:
        """The connection string of `database` on this server."""
        return f"postgresql://tidepost@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql; its output."""
        return subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-d",
                               self.dsn(database), "-c", sql],
                              check=True, capture_output=True, text=True).stdout

    def create_database(self, name: str) -> str:
        """Create an empty database; its DSN."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PrivateCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
