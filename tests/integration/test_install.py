"""`tidepost install` makes tidepost this machine's MTA, and `uninstall --purge` undoes it.

This test changes the real machine (CI runs as root on a scratch machine):
it installs into /opt/tidepost, creates the `tidepost` account, replaces
/usr/sbin/sendmail, mailq and newaliases (Postfix's, which ./run-tests
installs, are set aside with dpkg-divert), runs the installed daemon as an
admin would, sends mail between two real users with the plain
`/usr/sbin/sendmail` (no -C: the system configuration is found), and then
removes everything and checks that Postfix's files are back.  It skips when
tidepost is already installed here.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import free_port, tidepost_argv, wait_for

pytestmark = pytest.mark.integration

ETC = Path("/etc/tidepost")
PREFIX = Path("/opt/tidepost")
LINKS = ("/usr/sbin/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases")


def fingerprint(path: str) -> str | None:
    """What sits at `path`: a link target or a content hash (None: nothing)."""
    file = Path(path)
    if file.is_symlink():
        return "-> " + os.readlink(file)
    if file.exists():
        return hashlib.sha256(file.read_bytes()).hexdigest()
    return None


def tidepost(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The checkout's `tidepost` (the one an admin runs as ./tidepost)."""
    done = subprocess.run([*tidepost_argv(), *args], capture_output=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def test_install_then_mail_between_users_then_uninstall(unix_users, processes, tmp_path):
    if ETC.exists() or PREFIX.exists():
        pytest.skip("tidepost is installed on this machine already")
    # An account of its own rather than `tidepost`: other tidepost processes
    # started as root on this machine would switch to a `tidepost` account.
    account = f"tp{os.getpid() % 100000}mta"
    assert not _has_user(account)
    if not shutil.which("dpkg-divert"):
        pytest.skip("not a Debian system")
    before = {link: fingerprint(link) for link in LINKS}
    try:
        tidepost("install", "--user", account)
        _check_installed(account)
        alice, bob = unix_users("alice"), unix_users("bob")
        port = free_port()
        config = ETC / "tidepost.toml"
        config.write_text(config.read_text().replace('"127.0.0.1:25"', f'"127.0.0.1:{port}"'))
        checked = subprocess.run([str(PREFIX / "bin" / "tidepost"), "config", "check"],
                                 capture_output=True)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith(b"/etc/tidepost/tidepost.toml: OK")
        serve = processes.start([str(PREFIX / "bin" / "tidepost"), "serve"],
                                log=tmp_path / "serve.log")
        wait_for(lambda: Path("/var/spool/tidepost/public/submit.sock").exists()
                 or serve.poll() is not None, 30, what="the installed daemon",
                 detail=lambda: (tmp_path / "serve.log").read_text())
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        sent = alice.run("/usr/sbin/sendmail", bob.name,
                         stdin="Subject: installed\n\nvia /usr/sbin/sendmail\n")
        assert sent.returncode == 0, sent.stderr
        new = bob.home / "Maildir" / "new"
        [mail] = wait_for(lambda: list(new.iterdir()) if new.is_dir() else [], 20,
                          what="bob's mail", detail=lambda: (tmp_path / "serve.log").read_text())
        assert mail.stat().st_uid == bob.uid
        host = re.search(r'hostname = "([^"]+)"', config.read_text()).group(1)
        assert mail.read_bytes().startswith(f"Return-Path: <{alice.name}@{host}>".encode())
        mailq = subprocess.run(["/usr/bin/mailq"], capture_output=True)
        assert mailq.returncode == 0 and b"Mail queue is empty" in mailq.stdout
        newaliases = subprocess.run(["/usr/bin/newaliases"], capture_output=True)
        assert newaliases.returncode == 0, newaliases.stderr
        assert b"the daemon re-read it" in newaliases.stdout
        log = Path("/var/log/tidepost/tidepost.log").read_text()
        assert f"delivered to=<{bob.name}@" in log
        processes.stop(serve)
    finally:
        tidepost("uninstall", "--purge", check=False)
    assert {link: fingerprint(link) for link in LINKS} == before
    assert not ETC.exists() and not PREFIX.exists()
    assert not Path("/var/spool/tidepost").exists()
    assert not _has_user(account)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _check_installed(name: str) -> None:
    """The links, the account, the configuration and the spool are in place."""
    for link in LINKS:
        assert os.readlink(link) == str(PREFIX / "bin" / "tidepost"), link
    account = pwd.getpwnam(name)
    assert f'user = "{name}"' in (ETC / "tidepost.toml").read_text()
    spool = Path("/var/spool/tidepost").stat()
    assert (spool.st_uid, oct(spool.st_mode & 0o7777)) == (account.pw_uid, "0o755")
    maildrop = Path("/var/spool/tidepost/maildrop").stat()
    assert oct(maildrop.st_mode & 0o7777) == "0o3733"
    assert (ETC / "tidepost.toml").exists() and (ETC / "aliases").exists()
    if Path("/etc/systemd/system").is_dir():
        assert Path("/etc/systemd/system/tidepost.service").exists()
