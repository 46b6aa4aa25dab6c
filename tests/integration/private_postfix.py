"""A private Postfix instance for the integration tests, and its fixture.

`private_postfix(role)` starts Postfix from a folder of its own (config,
queue, data, log), as root, listening on 127.0.0.1:<free port> only, with no
chroot and no DNS; `role` is the main.cf lines that make it what a test
needs (a relay holding a site's mail until ETRN, an MX that refuses some
recipients and relays the rest to an smtp-sink...).  Postfix speaks
PIPELINING and CHUNKING (BDAT) and logs each session's command counts
(`disconnect from ... bdat=3 ...`), which the tests read.

Test modules use it with `from private_postfix import private_postfix`
(pytest then sees the fixture).  Tests skip when Postfix is not installed,
when not run as root, or without the `postfix` user.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

POSTFIX = "/usr/sbin/postfix"

POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
hold      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def holding_relay(site_port: int) -> str:
    """main.cf lines: relay for site.test only, held (`hold` transport) until ETRN.

    The mail goes through the `hold` transport to [127.0.0.1]:site_port;
    `defer_transports = hold` keeps it deferred until a flush (ETRN:
    `fast_flush_domains`) overrides the deferral.
    """
    return f"""\
relay_domains = site.test
fast_flush_domains = $relay_domains
transport_maps = inline:{{ site.test=hold:[127.0.0.1]:{site_port} }}
defer_transports = hold
smtpd_etrn_restrictions = permit
"""


class PrivatePostfix:
    """A Postfix instance of its own in `folder` (config, queue, data, log), run as root."""

    def __init__(self, folder: Path, port: int, role: str) -> None:
        self.folder, self.port = folder, port
        self.conf, self.queue = folder / "conf", folder / "queue"
        self.data, self.maillog = folder / "data", folder / "maillog"
        self.conf.mkdir(parents=True)
        folder.chmod(0o755)
        self.queue.mkdir(mode=0o755)
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postfix")
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.maillog}
maillog_file_prefixes = {folder}
myhostname = relay.test
mydomain = test
myorigin = relay.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
biff = no
{role}""")
        (self.conf / "master.cf").write_text(
            f"127.0.0.1:{port} inet n - n - - smtpd\n" + POSTFIX_SERVICES)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`postfix -c CONF ARGS...`; raises with the log when it fails and `check`."""
        done = subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)} exited {done.returncode}\n"
                                 f"{done.stdout.decode()}{done.stderr.decode()}\n{self.log()}")
        return done

    def start(self) -> None:
        """Create the queue's subdirectories and start the master."""
        self.postfix("check")   # creates them, owned by `postfix`
        self.postfix("start")

    def master_pid(self) -> int | None:
        """The running master's process id, from its pid file."""
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """`postfix stop`; the master's process group is killed if it lingers."""
        pid = self.master_pid()
        self.postfix("stop", check=False)
        if pid is None:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, 9)  # the master leads its own session: its group only
            except ProcessLookupError:
                pass

    def queue_listing(self) -> str:
        """`postqueue -p` for this instance."""
        done = subprocess.run(["/usr/sbin/postqueue", "-c", str(self.conf), "-p"],
                              capture_output=True, timeout=30)
        return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")

    def log(self) -> str:
        """The instance's maillog_file."""
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else "(no log)"

    def send(self, recipients: list[str], body: str) -> None:
        """Submit one message to Postfix's smtpd."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                          timeout=30) as client:
            client.sendmail("x@far.test", recipients, body)


def _alive(pid: int) -> bool:
    """True while process `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def private_postfix(processes):
    """Factory: private_postfix(role) -> a started PrivatePostfix; stopped at teardown."""
    helpers = type(processes).start.__globals__   # tests/integration/conftest.py
    helpers["require"](POSTFIX, "/usr/sbin/postqueue", "/usr/lib/postfix/sbin/master")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (its daemons drop to `postfix`)")
    try:
        import pwd
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no `postfix` user (the postfix package creates it)")
    started: list[PrivatePostfix] = []
    # Not under tmp_path: its parents are root-only (0700), and Postfix's master opens
    # data_directory after dropping to the `postfix` user.  Removed at teardown.
    folder = Path(tempfile.mkdtemp(prefix="tidepost-postfix-"))
    folder.chmod(0o755)

    def start(role: str) -> PrivatePostfix:
        instance = PrivatePostfix(folder / f"instance{len(started)}",
                                  helpers["free_port"]("127.0.0.1"), role)
        started.append(instance)
        instance.start()
        helpers["wait_for"](lambda: helpers["accepts"]("127.0.0.1", instance.port), 15,
                            what="Postfix's smtpd to listen", detail=instance.log)
        return instance

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()
            print(f"==== {instance.maillog}\n{instance.log()}")
        shutil.rmtree(folder, ignore_errors=True)
