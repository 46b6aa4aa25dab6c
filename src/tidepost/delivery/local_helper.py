"""The local delivery helper: the one part of tidepost that stays root.

A daemon started as root starts this helper (`python -m
tidepost.delivery.local_helper FD SPOOL TEMPLATE`, a fresh process, before
it gives up root itself) and then asks it, over a socket pair, to write
each message into its recipient's Maildir.  For every request the helper
forks a child that becomes the recipient (groups, gid, uid), writes the
file with delivery/maildir.py's `write_message` and exits; so every Maildir
file is created by its owner, and the kernel's permissions apply as if the
user had written it.  The helper computes the folder from the
configuration it was started with and the account's home, never from the
request, and refuses names that are not accounts; a daemon taken over by
an attacker can still only put mail into users' Maildirs, which is its job.

Frames: a request is a 4-octet big-endian length, that many octets of
JSON (`user`, `name`, `uncertain`, `size`), then `size` octets of message;
the reply is one JSON line (`ok`, `errno`, `note`).  The helper ends when
its socket closes (the daemon ended).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

from tidepost.accounts import Account, lookup
from tidepost.delivery.maildir import maildir_path, write_message

MAX_HEAD = 64 * 1024


class HelperGone(OSError):
    """The helper process ended or stopped answering."""


class LocalHelper:
    """The daemon's end: starts the helper and sends it deliveries (an OwnerWriter)."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket):
        self._process = process
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()  # one request at a time on the socket

    @classmethod
    def start(cls, spool: Path, template: str) -> LocalHelper:
        """Start the helper process (the caller must still be root)."""
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", "tidepost.delivery.local_helper", str(theirs.fileno()),
             str(spool), template], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            close_fds=True)
        theirs.close()
        return cls(process, ours)

    def write_as(self, account: Account, name: str, data: bytes, uncertain: bool) -> str:
        """Have the helper write one message as `account` (blocking)."""
        head = json.dumps({"user": account.name, "name": name, "uncertain": uncertain,
                           "size": len(data)}).encode()
        with self._lock:
            try:
                self._sock.sendall(struct.pack(">I", len(head)) + head + data)
                line = self._file.readline()
            except OSError as exc:
                raise HelperGone(f"local delivery helper: {exc}") from None
        if not line:
            raise HelperGone("the local delivery helper has ended")
        reply = json.loads(line)
        if not reply.get("ok"):
            code = int(reply.get("errno") or 0)
            raise OSError(code, reply.get("note") or os.strerror(code))
        return str(reply.get("note", "delivered"))

    def close(self) -> None:
        """End the helper: it exits when its socket closes (we may no longer signal it)."""
        self._file.close()
        self._sock.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            try:
                self._process.kill()
            except PermissionError:  # we gave up root; it ends with its socket anyway
                return
            self._process.wait()


# -- the helper process ----------------------------------------------------------------


def serve(sock: socket.socket, spool: Path, template: str) -> None:
    """Answer delivery requests until the daemon closes the socket."""
    stream = sock.makefile("rb")
    while True:
        size_field = stream.read(4)
        if len(size_field) < 4:
            return
        (head_size,) = struct.unpack(">I", size_field)
        if head_size > MAX_HEAD:
            return  # not our daemon talking: stop rather than guess
        head = json.loads(stream.read(head_size))
        data = stream.read(int(head["size"]))
        reply = deliver(head, data, spool, template)
        sock.sendall(json.dumps(reply).encode() + b"\n")


def deliver(head: dict, data: bytes, spool: Path, template: str) -> dict:
    """One delivery in a child that becomes the recipient; the reply to send."""
    account = lookup(str(head["user"]))
    if account is None:
        return {"ok": False, "errno": 0, "note": f"no account {head['user']!r}"}
    folder = maildir_path(template, spool, account.name, account.home)
    _make_top_folder(folder, account)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the recipient, write, report, exit
        os.close(read_end)
        _child(account, folder, str(head["name"]), data, bool(head.get("uncertain")),
               write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not answer or os.waitstatus_to_exitcode(status) != 0:
        return {"ok": False, "errno": 0, "note": "the delivery process failed"}
    return json.loads(answer)


def _child(account: Account, folder: Path, name: str, data: bytes, uncertain: bool,
           report: int) -> None:
    """In the forked child: drop to `account`, deliver, write the reply, _exit."""
    try:
        os.setgroups(os.getgrouplist(account.name, account.gid))
        os.setgid(account.gid)
        os.setuid(account.uid)
        os.umask(0o077)
        reply = {"ok": True, "note": write_message(folder, name, data, uncertain)}
    except OSError as exc:
        reply = {"ok": False, "errno": exc.errno or 0, "note": f"{folder}: {exc.strerror}"}
    except Exception as exc:  # noqa: BLE001 - the child must always answer and exit
        reply = {"ok": False, "errno": 0, "note": f"{folder}: {exc}"}
    try:
        os.write(report, json.dumps(reply).encode())
    finally:
        os._exit(0)


def _make_top_folder(folder: Path, account: Account) -> None:
    """Create a Maildir the user could not create (its parent is not theirs), as theirs."""
    parent = folder.parent
    try:
        if parent.stat().st_uid == account.uid or folder.exists():
            return
        os.mkdir(folder, 0o700)  # never follows a symlink in place of the folder
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, account.uid, account.gid)
        finally:
            os.close(fd)
    except OSError:
        pass  # the child's own attempt reports what is wrong


def main(argv: list[str]) -> int:
    """`python -m tidepost.delivery.local_helper FD SPOOL TEMPLATE`."""
    fd, spool, template = int(argv[0]), Path(argv[1]), argv[2]
    sock = socket.socket(fileno=fd)
    try:
        serve(sock, spool, template)
    except (OSError, ValueError, KeyError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
