"""A full disk: no 250 for mail not stored, the daemon keeps serving, nothing is lost.

The test mounts two small tmpfs file systems (it runs as root in CI; it is
skipped elsewhere) and unmounts them at the end: one is the node's spool,
one holds the Maildirs.  A filler file takes every free block.

- spool full: SMTP gets `452 4.3.1` after DATA (never a 250), `tidepost
  sendmail` exits 75, the daemon still answers; once the filler is gone
  the same submissions are accepted, and everything queued before, during
  and after is delivered exactly once;
- Maildirs full: the delivery is deferred with 4.3.1 (not bounced, not
  lost) and made once there is room again.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` for the block; unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def fill(folder: Path):
    """Take every free block of `folder`'s file system for the block."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    try:
        yield
    finally:
        filler.unlink()


def body(token: str) -> bytes:
    return f"From: bob@site.test\r\nSubject: {token}\r\n\r\ntoken {token}\r\n".encode()


def submit(node, token: str) -> tuple[int, bytes]:
    """The reply to the end of DATA for one message to alice."""
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test",
                      timeout=30) as client:
        client.ehlo()
        client.mail("bob@site.test")
        client.rcpt("alice@site.test")
        return client.data(body(token))


def tokens(folder: Path) -> list[str]:
    """The tokens of the messages in a Maildir, sorted."""
    files = [p for sub in ("new", "cur") if (folder / sub).is_dir()
             for p in (folder / sub).iterdir()]
    return sorted(line.split()[1].decode() for p in files
                  for line in p.read_bytes().splitlines() if line.startswith(b"token "))


@pytest.fixture
def small_disks(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    spool, mail = tmp_path / "spool", tmp_path / "mail"
    with tmpfs(spool, "16m"), tmpfs(mail, "1m"):
        yield spool, mail


def test_a_full_spool_refuses_with_452_and_recovers(tidepost_node, small_disks):
    spool, mail = small_disks
    node = tidepost_node(start=False)
    node.move_spool(spool)
    node.start()
    assert submit(node, "before")[0] == 250
    node.wait_queue_empty()
    with fill(spool):
        for attempt in range(3):  # the daemon keeps serving, and keeps saying 452
            code, text = submit(node, f"full{attempt}")
            assert (code, text[:5]) == (452, b"4.3.1"), text
        done = node.sendmail(["alice@site.test"], body("full-sendmail"), check=False)
        assert done.returncode == 75, done.stderr
        assert node.running
    assert submit(node, "after")[0] == 250
    assert node.sendmail(["alice@site.test"], body("after-sendmail")).returncode == 0
    node.wait_queue_empty()
    assert tokens(spool / "mail" / "alice") == ["after", "after-sendmail", "before"]
    assert node.maildir("bob") == []  # nothing bounced
    assert node.stop() == 0


def test_a_full_maildir_defers_and_delivers_later(tidepost_node, small_disks):
    _, mail = small_disks
    node = tidepost_node(local={"maildir": f"{mail}/{{user}}"})
    with fill(mail):
        assert submit(node, "waits")[0] == 250
        node.wait_for(lambda: "4.3.1" in node.queue(), what="a deferral with 4.3.1")
        assert "retry" in node.queue()
    node.cli("queue", "-c", str(node.config_path), "requeue", "--all")
    node.wait_queue_empty()
    assert tokens(mail / "alice") == ["waits"]
    assert not (mail / "bob").exists()  # no DSN
    assert node.stop() == 0


def test_a_maildrop_file_waits_while_the_spool_is_full(tidepost_node, small_disks):
    # A user's sendmail exited 0 with the daemon down: the file in the
    # maildrop is the only copy.  Picked up onto a full spool (4.3.1, a
    # temporary failure) it must stay there and be queued once there is
    # room, as Postfix's pickup does, not be thrown away with a notice.
    from tidepost.submission.local import LocalRequest
    spool, _ = small_disks
    node = tidepost_node(start=False)
    node.move_spool(spool)
    node.start()
    data = LocalRequest(("alice",), body("dropped") + b"x" * 76 * 4000 + b"\r\n").encode()
    drop = spool / "maildrop"
    with fill(spool):
        os.truncate(spool / "filler", os.path.getsize(spool / "filler") - len(data) - 40960)
        (drop / "tmp.user").write_bytes(data)  # as a user's sendmail leaves it
        os.chown(drop / "tmp.user", 65534, 0)  # a user's file (root's are refused)
        os.rename(drop / "tmp.user", drop / "user")
        node.wait_for(lambda: "maildrop file user could not be queued" in node.log_tail(200),
                      what="the pick-up to fail for lack of space")
        assert (drop / "user").exists()
    node.wait_queue_empty()
    assert tokens(spool / "mail" / "alice") == ["dropped"]
    assert not (drop / "user").exists()
    assert node.maildir("nobody") == []  # no 'not queued' notice
    assert node.stop() == 0
