"""Fixtures that run real processes: unbound, smtp-sink and `tidepost serve`.

- `unbound(records)` starts /usr/sbin/unbound on 127.0.0.1:<free port>
  serving a static `test.` zone made of the given RR strings, and returns a
  `DnsServer` once it answers.
- `smtp_sink(host, port, soft=..., hard=..., hangup=...)` starts Postfix's
  smtp-sink on host:port, dumping each mail transaction to its own file;
  `SmtpSink.messages()` parses the dumps into (sender, recipients, body).
  All MX hosts of a test share one port (`sink_port`), on 127.0.0.2-.9,
  because tidepost dials every MX host on `[delivery] smtp_port`.
- `tidepost_node(dns=..., smtp_port=..., **overrides)` writes a TOML config
  into a temporary folder (spool inside it), starts `tidepost serve`, waits
  for its SMTP port, and offers send / sendmail / flush / queue / kill /
  stop / restart / maildir / wait_for.

Every process belongs to the `processes` fixture, which ends them when the
test ends, pass or fail.  Logs of the nodes are printed at teardown, so
pytest shows them for failing tests.  Programs that are not installed skip
the tests that need them (./run-tests installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from tidepost.testing.dns import unbound_config

UNBOUND = "/usr/sbin/unbound"
SMTP_SINK = "/usr/sbin/smtp-sink"
SINK_HOSTS = tuple(f"127.0.0.{n}" for n in range(2, 10))
LOCAL_USERS = ("alice", "bob", "carol", "dave")
NO_DNS = "127.0.0.1:9"  # the discard port: nothing answers, nothing leaves the host


# -- ports and processes ---------------------------------------------------------------


def free_port(*hosts: str) -> int:
    """A TCP and UDP port that is free on every one of `hosts` (default 127.0.0.1)."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if all(_port_free(host, port) for host in hosts):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _port_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` for TCP and UDP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(family, kind) as probe:
                probe.bind((host, port))
    except OSError:
        return False
    return True


def accepts(host: str, port: int) -> bool:
    """True when something accepts a TCP connection on host:port now."""
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


def require(*programs: str) -> None:
    """Skip the test unless every program is installed."""
    for program in programs:
        if not (os.access(program, os.X_OK) or shutil.which(program)):
            pytest.skip(f"{program} is not installed (./run-tests installs it)")


def tidepost_argv() -> list[str]:
    """How to run the `tidepost` command of the Python running the tests."""
    script = Path(sys.executable).parent / "tidepost"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tidepost.cli.main"]


class Processes:
    """Owner of the processes a test starts: ends them all at teardown."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen:
        """Start `argv` in its own process group, output to `log` (else discarded)."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       **kwargs)
        finally:
            if log:
                out.close()
        self._running.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process's group and reap the process."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        process.wait()

    @staticmethod
    def stop(process: subprocess.Popen, timeout: float = 40.0) -> int:
        """SIGTERM to the group, wait up to `timeout` seconds, then SIGKILL; exit status."""
        if process.poll() is None:  # signal groups only while their leader is unreaped
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                Processes.kill(process)
        return process.returncode

    def stop_all(self) -> None:
        """End every process started here, newest first."""
        while self._running:
            self.stop(self._running.pop(), timeout=10.0)


@pytest.fixture
def processes():
    """Processes started by a test; all ended at teardown."""
    owner = Processes()
    try:
        yield owner
    finally:
        owner.stop_all()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition", detail: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


# -- unbound: a real DNS server with a static test zone ----------------------------------


@dataclass
class DnsServer:
    """A running unbound serving `records` on 127.0.0.1:port."""

    port: int
    records: tuple[str, ...]
    process: subprocess.Popen

    @property
    def address(self) -> str:
        """HOST:PORT, as [dns] nameservers wants it."""
        return f"127.0.0.1:{self.port}"


def dns_answers(port: int, name: str) -> bool:
    """True when the server on 127.0.0.1:port answers a query for `name`."""
    import dns.message
    import dns.query
    try:
        dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", timeout=0.3, port=port)
        return True
    except Exception:
        return False


@pytest.fixture
def unbound(tmp_path_factory, processes):
    """Factory: unbound(records) -> DnsServer serving those RR strings, once it answers."""
    require(UNBOUND)

    def start(records: Iterable[str]) -> DnsServer:
        records = tuple(records)
        folder = tmp_path_factory.mktemp("unbound")
        port = free_port("127.0.0.1")
        conf = unbound_config(folder, records, port=port)
        log = folder / "unbound.log"
        process = processes.start([UNBOUND, "-d", "-c", str(conf)], log=log)
        wait_for(lambda: process.poll() is not None or dns_answers(port, "test."), 15,
                 what="unbound to answer")
        if process.poll() is not None:
            raise RuntimeError(f"unbound exited {process.returncode}: {log.read_text()}")
        return DnsServer(port, records, process)

    return start


# -- smtp-sink: a real SMTP receiver that dumps what it accepts --------------------------


@dataclass(frozen=True)
class SinkMessage:
    """One mail transaction smtp-sink dumped: envelope and message (LF line ends)."""

    sender: str
    recipients: tuple[str, ...]
    body: bytes
    path: Path


def _angle(args: str) -> str:
    """The address inside <...> at the start of MAIL/RCPT arguments."""
    first = args.strip().split(" ", 1)[0]
    return first[1:-1] if first.startswith("<") and first.endswith(">") else first


def parse_dump(path: Path) -> SinkMessage | None:
    """Parse one smtp-sink dump file; None while its transaction is still being written.

    The file holds X-Client-Addr, X-Helo-Args, X-Mail-Args, one X-Rcpt-Args
    per recipient, a three-line Received header, then the message as sent
    (dot-stuffing undone, LF line ends) and one empty line.
    """
    data = path.read_bytes()
    if not data.endswith(b"\n\n"):
        return None
    lines = data.split(b"\n")
    sender, recipients = "", []
    for index, line in enumerate(lines):
        if line.startswith(b"X-Mail-Args: "):
            sender = _angle(line[13:].decode("utf-8", "replace"))
        elif line.startswith(b"X-Rcpt-Args: "):
            recipients.append(_angle(line[13:].decode("utf-8", "replace")))
        elif line.startswith(b"Received: "):
            body = b"\n".join(lines[index + 3:])
            return SinkMessage(sender, tuple(recipients), body[:-1], path)
    return None


class SmtpSink:
    """A Postfix smtp-sink on host:port; each start dumps to a fresh file prefix."""

    def __init__(self, processes: Processes, folder: Path, host: str, port: int) -> None:
        self.processes, self.folder, self.host, self.port = processes, folder, host, port
        self.process: subprocess.Popen | None = None
        self.generation = 0

    def start(self, soft: Iterable[str] = (), hard: Iterable[str] = (),
              hangup: Iterable[str] = (), options: Iterable[str] = ()) -> SmtpSink:
        """Listen; answer 4xx to `soft` commands, 5xx to `hard`, hang up after `hangup`.

        Command names as smtp-sink knows them: CONNECT, HELO, EHLO, MAIL, RCPT,
        DATA, "." (end of data), RSET, QUIT.  A sink that rejects "." still
        dumps the message it rejected, so count messages only on accepting sinks.
        """
        self.stop()
        self.generation += 1  # restarted sinks may reuse random names: new prefix
        argv = [SMTP_SINK, "-d", f"{self.folder}/{self.generation}."]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        for flag, commands in (("-r", soft), ("-f", hard), ("-q", hangup)):
            if commands:
                argv += [flag, ",".join(commands)]
        argv += [*options, f"{self.host}:{self.port}", "100"]
        self.process = self.processes.start(argv, log=self.folder.parent / "sink.log")
        wait_for(lambda: self.process.poll() is not None or accepts(self.host, self.port), 10,
                 what=f"smtp-sink on {self.host}:{self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited {self.process.returncode}")
        return self

    def stop(self) -> None:
        """Stop listening (the dumps stay)."""
        if self.process is not None:
            self.processes.stop(self.process, timeout=5)
            self.process = None

    def messages(self) -> list[SinkMessage]:
        """Every completely received transaction so far, oldest file first."""
        paths = sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [m for m in map(parse_dump, paths) if m is not None]

    def recipients(self) -> list[str]:
        """Every envelope recipient received so far, one entry per delivery."""
        return [r for m in self.messages() for r in m.recipients]


@pytest.fixture
def sink_port():
    """One port free on every 127.0.0.2-.9: all sinks of a test listen on it."""
    return free_port(*SINK_HOSTS)


@pytest.fixture
def smtp_sink(tmp_path_factory, processes):
    """Factory: smtp_sink(host, port, soft=(), hard=(), hangup=()) -> started SmtpSink."""
    require(SMTP_SINK)

    def start(host: str, port: int, **options: Any) -> SmtpSink:
        folder = tmp_path_factory.mktemp(f"sink-{host}") / "dump"
        folder.mkdir()
        return SmtpSink(processes, folder, host, port).start(**options)

    return start


# -- tidepost serve ----------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """One TOML value: string, bool, number or array of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: dict[str, Any]) -> str:
    """Top-level keys, then [tables], then [[arrays of tables]] (one level deep)."""
    lines, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            arrays.extend((key, item) for item in value)
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for header, (key, table) in [("[{}]", t) for t in tables] + [("[[{}]]", a) for a in arrays]:
        lines += ["", header.format(key)]
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; tables merge key by key, other values replace."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


INTERNET_ROUTE = {"name": "internet", "domains": ["*"], "transport": "mx",
                  "on_demand": False, "start_held": False}


class TidepostNode:
    """One `tidepost serve` with its own config, spool and log in `folder`."""

    def __init__(self, processes: Processes, folder: Path, *, dns: str = NO_DNS,
                 smtp_port: int = 25, overrides: dict[str, Any] | None = None) -> None:
        self.processes, self.folder = processes, folder
        self.spool = folder / "spool"
        self.port = free_port("127.0.0.1")
        self.config_path = folder / "tidepost.toml"
        self.log_path = folder / "serve.log"
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # set for the daemon on top of ours (LD_PRELOAD...)
        self.config = merged({
            "hostname": "site.test",
            "spool": str(self.spool),
            "smtp": {"listen": [f"127.0.0.1:{self.port}"]},
            "local": {"domains": ["localhost", "site.test"], "users": list(LOCAL_USERS),
                      "system_users": False},
            "queue": {"min_backoff": "1s", "max_backoff": "2s", "poll_interval": "0.2s"},
            "dns": {"nameservers": [dns], "timeout": "2s"},
            "delivery": {"smtp_port": smtp_port, "connect_timeout": "3s",
                         "command_timeout": "10s"},
            "route": [INTERNET_ROUTE],
            # The tests run as root in CI; the daemon keeps root's identity
            # for spools in pytest's private folders (test_local_users.py
            # tests the switch to a real account).
            "system": {"user": "root"},
        }, overrides or {})
        self.config_path.write_text(to_toml(self.config))

    # the daemon

    @property
    def running(self) -> bool:
        """True while the daemon process lives."""
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0, wait: bool = True) -> TidepostNode:
        """Start `tidepost serve`; unless not `wait`, wait until its SMTP port accepts."""
        assert not self.running, "already running"
        with open(self.log_path, "ab") as log:
            log.write(f"---- tidepost serve started at {time.time():.3f}\n".encode())
        self.process = self.processes.start(
            [*tidepost_argv(), "serve", "-c", str(self.config_path)], log=self.log_path,
            env={**os.environ, **self.env})
        return self.wait_listening(timeout) if wait else self

    def wait_listening(self, timeout: float = 20.0) -> TidepostNode:
        """Wait until the daemon's SMTP port accepts connections (fail if it exits)."""
        wait_for(lambda: not self.running or accepts("127.0.0.1", self.port), timeout,
                 what="tidepost serve to listen", detail=self.log_tail)
        if not self.running:
            raise AssertionError(f"tidepost serve exited {self.process.returncode}\n"
                                 f"{self.log_tail()}")
        return self

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait for a clean exit; its exit status."""
        assert self.process is not None, "never started"
        return self.processes.stop(self.process, timeout)

    def move_spool(self, spool: Path) -> None:
        """Use `spool` from the next start on."""
        self.config["spool"] = str(spool)
        self.config_path.write_text(to_toml(self.config))
        self.spool = spool

    def kill(self) -> None:
        """SIGKILL: the crash the queue must survive."""
        assert self.process is not None, "never started"
        self.processes.kill(self.process, signal.SIGKILL)

    def restart(self) -> TidepostNode:
        """Stop (cleanly, if still running) and start again."""
        if self.running:
            self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the daemon's log."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # clients

    def send(self, sender: str, recipients: str | Iterable[str], body: bytes | str,
             timeout: float = 30.0) -> dict:
        """Submit one message over SMTP; the refused recipients (raises if all are)."""
        if isinstance(recipients, str):
            recipients = [recipients]
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                          timeout=timeout) as client:
            return client.sendmail(sender, list(recipients), body)

    def cli(self, *args: str, stdin: bytes | str | None = None, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `tidepost ARGS...`; output captured; raises on non-zero exit when `check`."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        done = subprocess.run([*tidepost_argv(), *args], input=data, capture_output=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"tidepost {' '.join(args)} exited {done.returncode}\n"
                                 f"stdout: {done.stdout.decode(errors='replace')}\n"
                                 f"stderr: {done.stderr.decode(errors='replace')}")
        return done

    def sendmail(self, args: Iterable[str], stdin: bytes | str,
                 check: bool = True) -> subprocess.CompletedProcess:
        """`tidepost sendmail -C CONFIG ARGS...` with `stdin` as the message."""
        return self.cli("sendmail", "-C", str(self.config_path), *args, stdin=stdin,
                        check=check)

    def flush(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`tidepost flush -c CONFIG ARGS...`."""
        return self.cli("flush", "-c", str(self.config_path), *args, check=check)

    def flush_process(self, *args: str) -> subprocess.Popen:
        """Start `tidepost flush -c CONFIG ARGS...` in the background (owned by the test)."""
        return self.processes.start([*tidepost_argv(), "flush", "-c", str(self.config_path),
                                     *args], log=self.folder / "flush.log")

    def queue(self) -> str:
        """The output of `tidepost queue -c CONFIG`."""
        return self.cli("queue", "-c", str(self.config_path)).stdout.decode(errors="replace")

    def queue_empty(self) -> bool:
        """True when `tidepost queue` lists nothing."""
        return "Mail queue is empty" in self.queue()

    # results

    def maildir(self, user: str) -> list[bytes]:
        """Messages delivered to `user`'s Maildir (new/ and cur/), oldest first."""
        folder = self.spool / "mail" / user
        paths = [p for sub in ("new", "cur") if (folder / sub).is_dir()
                 for p in (folder / sub).iterdir()]
        return [p.read_bytes() for p in sorted(paths, key=lambda p: p.stat().st_mtime_ns)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0,
                 what: str = "condition", interval: float = 0.1) -> Any:
        """Poll `predicate` until true; on timeout fail with the queue and the log."""
        return wait_for(predicate, timeout, interval, what, detail=self.diagnostics)

    def wait_queue_empty(self, timeout: float = 45.0) -> None:
        """Wait until `tidepost queue` lists nothing."""
        self.wait_for(self.queue_empty, timeout, "an empty queue", interval=0.3)

    def diagnostics(self) -> str:
        """The queue listing and the log tail, for failure messages."""
        try:
            queue = self.queue()
        except Exception as exc:  # the report must not hide the original failure
            queue = f"(tidepost queue failed: {exc})"
        return f"-- queue:\n{queue}\n-- serve log:\n{self.log_tail()}"


@pytest.fixture
def tidepost_node(tmp_path_factory, processes):
    """Factory: tidepost_node(dns=ADDR, smtp_port=PORT, start=True, **overrides) -> node.

    `overrides` are merged into the config: tables key by key, anything
    else (a `route` list, say) replaces the default.  The logs of every node
    are printed at teardown, which pytest shows when the test failed.
    """
    nodes: list[TidepostNode] = []

    def make(dns: str | DnsServer = NO_DNS, smtp_port: int = 25, start: bool = True,
             **overrides: Any) -> TidepostNode:
        address = dns.address if isinstance(dns, DnsServer) else dns
        node = TidepostNode(processes, tmp_path_factory.mktemp("node"), dns=address,
                            smtp_port=smtp_port, overrides=overrides)
        nodes.append(node)
        return node.start() if start else node

    try:
        yield make
    finally:
        for node in nodes:
            print(f"==== {node.config_path}\n{node.config_path.read_text()}")
            print(f"==== {node.log_path}\n{node.log_tail(200)}")


# -- real Unix users ------------------------------------------------------------------
#
# Tests of what ordinary users do run as real users the test creates
# (useradd), with a tidepost environment everyone can read: the one under
# .venv may live in /root, which other users cannot enter.


def _skip_unless_users_possible() -> None:
    """Skip unless root with useradd/setpriv and Debian's python3 with venv."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create users")
    for program in ("useradd", "userdel", "setpriv"):
        if not shutil.which(program):
            pytest.skip(f"{program} is not installed")
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"],
                      capture_output=True).returncode != 0:
        pytest.skip("/usr/bin/python3 has no venv (./run-tests installs python3-venv)")


@pytest.fixture(scope="session")
def shared_tidepost():
    """A tidepost environment in /var/tmp that every user can run; its `tidepost` command."""
    _skip_unless_users_possible()
    from tidepost.cli.install import make_environment
    folder = Path(f"/var/tmp/tidepost-test-{os.getpid()}")
    checkout = Path(__file__).resolve().parents[2]
    try:
        make_environment(folder / "env", checkout)
        folder.chmod(0o755)
        yield folder / "env" / "bin" / "tidepost"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class UnixUser:
    """A user a test created: name, ids and home."""

    name: str
    uid: int
    gid: int
    home: Path

    def run(self, *argv: str, stdin: bytes | str | None = None, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `argv` as this user (setpriv: uid, gid and groups), output captured."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        environment = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                       "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **(env or {})}
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                               "--init-groups", "--", *argv], input=data,
                              capture_output=True, timeout=timeout, env=environment,
                              cwd="/")


@pytest.fixture
def unix_users():
    """Factory: unix_users(name, system=False) -> a new UnixUser; all removed afterwards."""
    _skip_unless_users_possible()
    made: list[str] = []

    def make(name: str, system: bool = False) -> UnixUser:
        login = f"tp{os.getpid() % 100000}{name}"[:31]
        argv = ["useradd", "--user-group", "--shell", "/bin/sh"]
        argv += ["--system", "--no-create-home", "--home-dir", "/nonexistent"] if system \
            else ["--create-home"]
        subprocess.run([*argv, login], check=True, capture_output=True)
        made.append(login)
        import pwd
        entry = pwd.getpwnam(login)
        return UnixUser(login, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    try:
        yield make
    finally:
        for login in reversed(made):
            subprocess.run(["pkill", "-KILL", "-u", login], capture_output=True)
            subprocess.run(["userdel", "--remove", login], capture_output=True)
            subprocess.run(["groupdel", login], capture_output=True)
