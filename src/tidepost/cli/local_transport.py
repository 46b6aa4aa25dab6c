"""How `tidepost sendmail` reaches the queue: socket, direct write, or maildrop.

`hand_over(config, request)` tries, in order:
1. the daemon's submission socket (SPOOL/public/submit.sock): the daemon
   checks, queues and answers; its answer is the result;
2. when this process may write the queue itself (it is the spool's account,
   or root, who first becomes that account): the same rules, in-process,
   with this process's own identity;
3. the maildrop (SPOOL/maildrop): the request is checked here as far as the
   configuration readable by this user allows, written as `tmp.NAME`,
   fsync'd, renamed to `NAME` and the file system synced (the rename must
   reach the disk too), so exit 0 still means on stable storage; the
   daemon queues it when it starts.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import socket
from pathlib import Path

from tidepost.accounts import current, is_root
from tidepost.config.schema import Config
from tidepost.control import spool
from tidepost.errors import ConfigError
from tidepost.submission.local import (EX_OK, EX_TEMPFAIL, LocalRequest, LocalResult,
                                       LocalSubmitter, Submitter)

SOCKET_TIMEOUT = 120.0  # seconds to wait for the daemon's answer (its commit)


def hand_over(config: Config, request: LocalRequest) -> LocalResult:
    """Queue `request` by the first way that works (module docstring)."""
    result = via_socket(spool.submit_socket(config.spool_path), request)
    if result is not None:
        return result
    if is_root() or may_write_queue(config.spool_path):
        return directly(config, request)
    return via_maildrop(config, request)


def via_socket(path: Path, request: LocalRequest) -> LocalResult | None:
    """The daemon's answer, or None when no daemon listens on `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SOCKET_TIMEOUT)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError, PermissionError):
                return None
            try:
                sock.sendall(request.encode())
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused from its header (too large): the answer is waiting
            answer = sock.makefile("rb").readline()
    except OSError as exc:
        return LocalResult(EX_TEMPFAIL, f"the mail daemon did not answer: {exc}")
    if not answer:
        return LocalResult(EX_TEMPFAIL, "the mail daemon closed the connection; "
                                        "the message was not queued")
    return LocalResult.from_json(answer)


def may_write_queue(spool_path: Path) -> bool:
    """True when this user owns the spool (the daemon's account, a first-run user)."""
    try:
        return spool_path.stat().st_uid == os.geteuid()
    except FileNotFoundError:
        return True  # a first run: the spool will be this user's


def directly(config: Config, request: LocalRequest) -> LocalResult:
    """Queue in this process (the spool's account, or root turned into it)."""
    me = current()
    from tidepost.startup import become_spool_owner
    become_spool_owner(config)
    return asyncio.run(_queue_directly(config, request, Submitter(me.uid, me.name, True)))


async def _queue_directly(config: Config, request: LocalRequest,
                          submitter: Submitter) -> LocalResult:
    """Build the submission path, queue, close the queue, wake a daemon."""
    from tidepost import node
    from tidepost.control.client import request as control_request
    try:
        parts = node.build(config)
    except Exception as exc:  # noqa: BLE001 - the exit code must say "not queued"
        return LocalResult(EX_TEMPFAIL, f"message not queued: {exc}")
    try:
        result = await LocalSubmitter(config, parts.submission).submit(request, submitter)
    except Exception as exc:  # noqa: BLE001 - the exit code must say "not queued"
        result = LocalResult(EX_TEMPFAIL, f"message not queued: {exc}")
    finally:
        await parts.close()
    if result.code == EX_OK:
        control_request(config.spool_path, "wake", timeout=2.0)
    return result


def via_maildrop(config: Config, request: LocalRequest) -> LocalResult:
    """Check what can be checked here, then leave the request in the maildrop."""
    refusal = _precheck(config, request)
    if refusal is not None:
        return refusal
    folder = spool.maildrop(config.spool_path)
    try:
        name = drop_file(folder, request.encode())
    except OSError as exc:
        return LocalResult(EX_TEMPFAIL, f"the mail system is not running and its maildrop "
                                        f"{folder} cannot be written: {exc.strerror}")
    return LocalResult(EX_OK, f"left in the maildrop as {name}")


def _precheck(config: Config, request: LocalRequest) -> LocalResult | None:
    """The refusal the daemon would give, as far as this user can tell; else None."""
    from tidepost.routing.routes import Router
    from tidepost.submission.aliases import Aliases
    from tidepost.submission.submit import Submission
    try:
        submission = Submission(config, None, None, Router(config), Aliases(config))  # type: ignore[arg-type]
    except ConfigError:
        return None  # an aliases file we may not read: the daemon checks at pick-up
    me = current()
    result = LocalSubmitter(config, submission).check(request, Submitter(me.uid, me.name,
                                                                         False))
    return result if result.code != EX_OK else None


def drop_file(folder: Path, data: bytes) -> str:
    """Write `data` durably as a new file in `folder`; its name."""
    name = secrets.token_hex(10)
    tmp = folder / f"tmp.{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    try:
        os.fchmod(fd, 0o640)  # readable by the daemon's group (the folder is setgid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.rename(tmp, folder / name)
        _sync_file_system(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return name


def _sync_file_system(fd: int) -> None:
    """Make the rename durable: syncfs() the file system, the folder being unreadable.

    The maildrop folder cannot be opened by users (no read permission), so
    it cannot be fsync'd; syncfs on the file's own descriptor writes that
    file system's metadata, the new directory entry included.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
        os.sync()
