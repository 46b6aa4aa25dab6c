"""Every local user submits with their true identity and reads their own Maildir.

Real users made with useradd (removed afterwards), a tidepost environment
they can read, and `tidepost serve` started as root, as an admin would:
it must bind, then run as its own account; mail from `tidepost sendmail`
run by a user carries that user as sender whatever -f says; each Maildir
belongs to its user; nobody but root and the daemon reads the queue; and
while the daemon is down, mail waits in the maildrop and is delivered once
it starts.  A hostile user's garbage costs the daemon nothing.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, wait_for

pytestmark = pytest.mark.integration

MESSAGE = "Subject: from a local user\n\nhello\n"


def write_config(folder: Path, daemon: str, port: int) -> Path:
    """A system-like configuration: Maildirs in the users' homes, uplink held."""
    config = folder / "tidepost.toml"
    config.write_text(f"""
hostname = "box.test"
spool = "{folder}/spool"
[system]
user = "{daemon}"
[smtp]
listen = ["127.0.0.1:{port}"]
[local]
domains = ["box.test"]
maildir = "{{home}}/Maildir"
[queue]
poll_interval = "0.3s"
[log]
file = "{folder}/mail.log"
[[route]]
name = "uplink"
domains = ["*"]
start_held = true
""")
    return config


@pytest.fixture
def site(shared_tidepost, unix_users, processes, tmp_path_factory):
    """A daemon account, two users, a config in a folder everyone can enter."""
    folder = Path(f"/var/tmp/tidepost-site-{os.getpid()}-{time.monotonic_ns()}")
    folder.mkdir(mode=0o755)
    daemon = unix_users("d", system=True)
    alice, bob = unix_users("alice"), unix_users("bob")
    os.chown(folder, daemon.uid, daemon.gid)  # the log file goes here
    port = free_port()
    config = write_config(folder, daemon.name, port)
    site = Site(shared_tidepost, processes, folder, config, port, daemon, alice, bob)
    try:
        yield site
    finally:
        site.stop()
        subprocess.run(["rm", "-rf", str(folder)])


class Site:
    """The pieces of one test site, and what the tests do with them."""

    def __init__(self, tidepost, processes, folder, config, port, daemon, alice, bob):
        self.tidepost, self.processes, self.folder = str(tidepost), processes, folder
        self.config, self.port = config, port
        self.daemon, self.alice, self.bob = daemon, alice, bob
        self.spool = folder / "spool"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """`tidepost serve` as root, as an admin (or systemd) starts it."""
        self.process = self.processes.start([self.tidepost, "serve", "-c", str(self.config)],
                                            log=self.folder / "serve.log")
        wait_for(lambda: self.process.poll() is not None or _accepts(self.port), 30,
                 what="tidepost serve to listen", detail=self.log)
        assert self.process.poll() is None, self.log()
        wait_for(lambda: (self.spool / "public" / "submit.sock").exists(), 10,
                 what="the submission socket")

    def stop(self) -> None:
        """SIGTERM the daemon and wait."""
        if self.process is not None:
            self.processes.stop(self.process)
            self.process = None

    def sendmail(self, user, *args: str, message: str = MESSAGE) -> subprocess.CompletedProcess:
        """`tidepost sendmail -C CONFIG ARGS` as `user`."""
        return user.run(self.tidepost, "sendmail", "-C", str(self.config), *args,
                        stdin=message)

    def maildir_files(self, user) -> list[Path]:
        """Messages in `user`'s ~/Maildir/new (read as root)."""
        new = user.home / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def log(self) -> str:
        """The daemon's standard error and the mail log file."""
        parts = []
        for name in ("serve.log", "mail.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"-- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def test_root_started_daemon_runs_as_its_account_and_users_get_their_own_mail(site):
    site.start()
    assert _uids(site.process.pid) == [site.daemon.uid] * 4
    done = site.sendmail(site.alice, site.bob.name)
    assert done.returncode == 0, done.stderr
    [delivered] = wait_for(lambda: site.maildir_files(site.bob), 20,
                           what="bob's mail", detail=site.log)
    info = delivered.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == \
        (site.bob.uid, site.bob.gid, 0o600)
    for folder in ("Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
        folder_info = (site.bob.home / folder).stat()
        assert (folder_info.st_uid, stat.S_IMODE(folder_info.st_mode)) == (site.bob.uid, 0o700)
    text = delivered.read_bytes().decode()
    assert text.startswith(f"Return-Path: <{site.alice.name}@box.test>\n")
    assert f"from userid {site.alice.name} uid {site.alice.uid}" in text
    read_own = site.bob.run("cat", str(delivered))
    assert read_own.returncode == 0 and b"hello" in read_own.stdout
    assert site.alice.run("cat", str(delivered)).returncode != 0
    queue_id = text.split(" id ", 1)[1].split(";", 1)[0].split()[0]
    log = wait_for(lambda: "delivered" in site.log() and site.log(), 10, what="the log")
    assert f"{queue_id}: received from=<{site.alice.name}@box.test>" in log
    assert f"uid={site.alice.uid}, user={site.alice.name}" in log
    assert f"{queue_id}: delivered to=<{site.bob.name}@box.test>" in log


def test_an_untrusted_user_cannot_choose_the_sender_or_forge_the_hosts_received(site):
    site.start()
    forged = ("Received: from mx.elsewhere.test by box.test (tidepost) id FAKE;\n"
              " Mon, 1 Jan 2024 00:00:00 +0000\nSubject: forged\n\nbody\n")
    done = site.sendmail(site.alice, "-f", "root@box.test", site.bob.name, message=forged)
    assert done.returncode == 0, done.stderr
    [delivered] = wait_for(lambda: site.maildir_files(site.bob), 20, what="bob's mail",
                           detail=site.log)
    text = delivered.read_bytes().decode()
    assert text.startswith(f"Return-Path: <{site.alice.name}@box.test>\n")
    assert f"X-Authentication-Warning: box.test: {site.alice.name} set sender to " \
           "root@box.test using -f" in text
    assert "\nX-Untrusted-Received: from mx.elsewhere.test by box.test" in text
    assert "\nReceived: from mx.elsewhere.test" not in text
    own = site.sendmail(site.alice, "-f", f"{site.alice.name}@box.test", site.bob.name)
    assert own.returncode == 0


def test_users_cannot_read_the_queue_and_unknown_users_are_refused(site):
    site.start()
    listing = site.alice.run(site.tidepost, "queue", "-c", str(site.config))
    assert listing.returncode == 77, listing.stderr
    assert b"permission denied" in listing.stderr
    assert site.alice.run("cat", str(site.spool / "queue.sqlite")).returncode != 0
    unknown = site.sendmail(site.alice, "nobody-here-at-all")
    assert unknown.returncode == 67 and b"unknown local user" in unknown.stderr
    as_root = subprocess.run([site.tidepost, "queue", "-c", str(site.config)],
                             capture_output=True)
    assert as_root.returncode == 0, as_root.stderr
    assert (site.spool / "queue.sqlite").stat().st_uid == site.daemon.uid


def test_mailq_and_sendmail_q_as_a_user_are_refused_plainly(site):
    site.start()
    for flags in (("-bp",), ("-q",), ("-qR", "example.org")):
        done = site.sendmail(site.alice, *flags)
        assert done.returncode == 77, (flags, done.stderr)
        assert b"permission denied" in done.stderr and b"Traceback" not in done.stderr


def test_a_user_cannot_read_the_link_meter_and_is_told_plainly(site):
    site.start()
    made = subprocess.run([site.tidepost, "link", "usage", "-c", str(site.config)],
                          capture_output=True)
    assert made.returncode == 0, made.stderr  # as root: the meter's file now exists
    for args in (("link", "usage"), ("link", "usage", "--senders")):
        done = site.alice.run(site.tidepost, *args, "-c", str(site.config))
        assert done.returncode == 77, (args, done.stderr)
        assert b"permission denied" in done.stderr and b"Traceback" not in done.stderr
    usage = site.spool / "usage.sqlite"
    assert not usage.exists() or stat.S_IMODE(usage.stat().st_mode) == 0o600


def test_mail_waits_in_the_maildrop_while_the_daemon_is_down(site):
    site.start()
    site.stop()
    done = site.sendmail(site.alice, site.bob.name)
    assert done.returncode == 0, done.stderr
    dropped = [p for p in (site.spool / "maildrop").iterdir()]
    assert len(dropped) == 1
    info = dropped[0].stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == \
        (site.alice.uid, site.daemon.gid, 0o640)
    assert site.bob.run("cat", str(dropped[0])).returncode != 0
    assert site.bob.run("ls", str(site.spool / "maildrop")).returncode != 0
    assert site.bob.run("rm", "-f", str(dropped[0])).returncode != 0  # sticky: not his
    assert dropped[0].exists()
    site.start()
    [delivered] = wait_for(lambda: site.maildir_files(site.bob), 20, what="bob's mail",
                           detail=site.log)
    assert f"Return-Path: <{site.alice.name}@box.test>" in delivered.read_bytes().decode()
    assert list((site.spool / "maildrop").iterdir()) == []


def test_a_hostile_user_cannot_hurt_the_daemon_or_reach_other_files(site):
    site.start()
    drop = site.spool / "maildrop"
    script = (
        "import socket, sys, os\n"
        f"path = {str(site.spool / 'public' / 'submit.sock')!r}\n"
        "for payload in (b'garbage\\n', b'TIDEPOST-SUBMIT 1\\n' + b'x' * 400000,\n"
        "                b'TIDEPOST-SUBMIT 1\\n{\"recipients\": 5, \"size\": 1}\\nx',\n"
        "                b'TIDEPOST-SUBMIT 1\\n{\"recipients\": [], \"size\": 99}\\nshort'):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(path)\n"
        "    try:\n"  # the daemon may refuse and hang up before the rest is sent
        "        s.sendall(payload); s.shutdown(socket.SHUT_WR)\n"
        "    except (BrokenPipeError, ConnectionResetError):\n"
        "        pass\n"
        "    print(s.recv(1000)); s.close()\n"
        f"os.symlink('/etc/shadow', {str(drop / 'evil-link')!r})\n"
        f"open({str(drop / 'garbage-file')!r}, 'w').write('not a request')\n"
    )
    hostile = site.alice.run("/usr/bin/python3", "-c", script)
    assert hostile.returncode == 0, hostile.stderr
    answers = hostile.stdout.decode().splitlines()
    assert len(answers) == 4 and all('"code": 6' in a for a in answers), answers
    shadow = Path("/etc/shadow").stat()
    done = site.sendmail(site.alice, site.bob.name)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: site.maildir_files(site.bob), 20, what="bob's mail", detail=site.log)
    wait_for(lambda: not (drop / "garbage-file").exists()
             and not (drop / "evil-link").is_symlink(), 10, what="the maildrop emptied")
    assert site.process.poll() is None
    assert Path("/etc/shadow").stat() == shadow
    notices = wait_for(lambda: site.maildir_files(site.alice), 20,
                       what="alice told her maildrop file was refused", detail=site.log)
    assert "not queued" in notices[0].read_bytes().decode()


def test_started_by_an_ordinary_user_it_runs_as_that_user(shared_tidepost, unix_users,
                                                         processes):
    carol = unix_users("carol")
    port = free_port()
    config = carol.home / "tidepost.toml"
    config.write_text(f'hostname = "laptop.test"\nspool = "{carol.home}/spool"\n'
                      f'[smtp]\nlisten = ["127.0.0.1:{port}"]\n'
                      '[local]\ndomains = ["laptop.test"]\n')
    os.chown(config, carol.uid, carol.gid)
    serve = processes.start(["setpriv", f"--reuid={carol.uid}", f"--regid={carol.gid}",
                             "--init-groups", "--", str(shared_tidepost), "serve", "-c",
                             str(config)], log=Path(f"/tmp/carol-{port}.log"),
                            env={"HOME": str(carol.home), "PATH": "/usr/bin:/bin"})
    wait_for(lambda: serve.poll() is not None or _accepts(port), 30,
             what="carol's daemon")
    assert serve.poll() is None
    daemon_pid = int((carol.home / "spool" / "tidepost.pid").read_text())
    assert _uids(daemon_pid) == [carol.uid] * 4
    done = carol.run(str(shared_tidepost), "sendmail", "-C", str(config), carol.name,
                     stdin=MESSAGE)
    assert done.returncode == 0, done.stderr
    maildir = carol.home / "spool" / "mail" / carol.name / "new"
    [mail] = wait_for(lambda: list(maildir.iterdir()) if maildir.is_dir() else [], 20,
                      what="carol's mail")
    assert mail.stat().st_uid == carol.uid
    processes.stop(serve)
    Path(f"/tmp/carol-{port}.log").unlink(missing_ok=True)
