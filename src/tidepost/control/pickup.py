"""Local submissions reaching the daemon: the submission socket and the maildrop.

Python cannot be setgid, so instead of Postfix's postdrop the daemon
listens on SPOOL/public/submit.sock (mode 0666) and learns who is talking
from the kernel (SO_PEERCRED): a user cannot claim to be someone else.
The request format and the rules are submission/local.py's; the answer is
one JSON line whose code 0 means committed (fsync'd).  A connection must
deliver its whole request within SOCKET_DEADLINE seconds; at most
MAX_CLIENTS are served at once (more get a temporary failure at once).

While no daemon runs, `tidepost sendmail` leaves the request as a file in
SPOOL/maildrop (mode 3733: users may create files but not list or read the
folder, and the sticky bit keeps them from others' files).  A file is
written as `tmp.NAME`, fsync'd, and renamed to `NAME`; the daemon picks up
complete files at start and every poll.  The file's owner is the
submitter.  Files that are not plain files with one link, that belong to
root or to the daemon, or that are too big are removed unread; a file that
cannot be queued becomes a notice to its owner, but one refused for now
(a full spool: exit 75) stays for the next round.  Each file is queued with
the transfer key `maildrop:UID:NAME:INODE:MTIME`, so a crash between the
commit and the unlink cannot queue it twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path

from tidepost.accounts import login_of
from tidepost.eventlog import NOQUEUE, event
from tidepost.submission import local
from tidepost.submission.local import LocalRequest, LocalResult, LocalSubmitter, Submitter

log = logging.getLogger("tidepost.control.pickup")

SOCKET_DEADLINE = 60.0      # seconds for a whole request over the socket
MAX_CLIENTS = 64            # requests served at once
ABANDONED_TMP = 3600.0      # seconds after which a tmp.* maildrop file is given up
HEADER_SLACK = 64 * 1024    # octets a file may exceed the message limit by (its header)


def peer_uid(writer: asyncio.StreamWriter) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class SubmitSocket:
    """SPOOL/public/submit.sock: serves local submission requests."""

    def __init__(self, path: Path, submitter: LocalSubmitter, max_message_size: int):
        self._path = path
        self._submitter = submitter
        self._max_size = max_message_size
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0
        self._own_uid = os.geteuid()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and make it usable by everyone."""
        if self._path.exists() or self._path.is_symlink():
            self._path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self._path), limit=local.MAX_HEADER + 1024)
        os.chmod(self._path, 0o666)

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one request; nothing a client sends can end the daemon."""
        self._clients += 1
        try:
            uid = peer_uid(writer)
            if self._clients > MAX_CLIENTS:
                result = LocalResult(local.EX_TEMPFAIL, "too many submissions at once")
            else:
                result = await self._answer(reader, uid)
            writer.write(result.to_json())
            await asyncio.wait_for(writer.drain(), 10.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - a bug here costs one request, not the daemon
            log.exception("local submission failed")
        finally:
            self._clients -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, uid: int) -> LocalResult:
        """Read a request within the deadline and submit it as `uid`."""
        try:
            async with asyncio.timeout(SOCKET_DEADLINE):
                request = await self._read(reader)
        except TimeoutError:
            return LocalResult(local.EX_TEMPFAIL, "request not received in time")
        except asyncio.IncompleteReadError:
            return LocalResult(local.EX_DATAERR, "bad request: it ended early")
        except local.RequestError as exc:
            return LocalResult(local.EX_DATAERR, f"bad request: {exc}")
        if isinstance(request, LocalResult):
            return request
        login = login_of(uid)
        trusted = self._submitter.is_trusted(login, uid, self._own_uid)
        return await self._submitter.submit(request, Submitter(uid, login, trusted))

    async def _read(self, reader: asyncio.StreamReader) -> LocalRequest | LocalResult:
        """Magic line, header line, message: never more than the limits allow."""
        if await reader.readexactly(len(local.MAGIC)) != local.MAGIC:
            raise local.RequestError("not a tidepost submission")
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.LimitOverrunError, ValueError):
            raise local.RequestError("the request header is too long") from None
        head = local.decode_head(line)
        if head["size"] > self._max_size:
            return LocalResult(local.EX_DATAERR, "message exceeds smtp.max_message_size")
        return local.request_from(head, await reader.readexactly(head["size"]))


class Maildrop:
    """SPOOL/maildrop: picks up what local users left while no daemon ran."""

    def __init__(self, folder: Path, submitter: LocalSubmitter, max_message_size: int):
        self._folder = folder
        self._submitter = submitter
        self._limit = max_message_size + HEADER_SLACK
        self._own_uid = os.geteuid()

    async def run(self, interval: float) -> None:
        """Pick up at once, then every `interval` seconds, until cancelled."""
        while True:
            try:
                await self.pick_up()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("maildrop pick-up failed")
            await asyncio.sleep(interval)

    async def pick_up(self) -> int:
        """Queue every complete file; returns how many were queued."""
        names = await asyncio.to_thread(self._names)
        queued = 0
        for name in names:
            try:
                queued += await self._take(name)
            except Exception:  # noqa: BLE001 - one bad file must not stop the others
                log.exception("maildrop file %s could not be picked up", name)
        return queued

    def _names(self) -> list[str]:
        """Complete files, oldest first; abandoned tmp.* files are removed."""
        found = []
        now = time.time()
        with os.scandir(self._folder) as entries:
            for entry in entries:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if entry.name.startswith("tmp."):
                    if now - mtime > ABANDONED_TMP:
                        self._remove(entry.name, "abandoned while being written")
                    continue
                found.append((mtime, entry.name))
        return [name for _, name in sorted(found)]

    async def _take(self, name: str) -> int:
        """Queue one file and remove it (kept on a temporary failure); 1 when it was queued."""
        read = await asyncio.to_thread(self._read, name)
        if read is None:
            return 0
        data, uid, key = read
        login = login_of(uid)
        submitter = Submitter(uid, login, self._submitter.is_trusted(login, uid, -1),
                              way="maildrop")
        try:
            request = local.decode(data)
        except local.RequestError as exc:
            result = LocalResult(local.EX_DATAERR, f"bad maildrop file: {exc}")
        else:
            result = await self._submitter.submit(request, submitter, transfer_key=key)
        if result.code == local.EX_TEMPFAIL:  # a full spool, say: the file is the only copy
            log.warning("maildrop file %s could not be queued, kept for the next round: %s",
                        name, result.text)
            return 0
        if result.code != local.EX_OK:
            await self._submitter.notify_refused(submitter, result.text, data[:4096])
        await asyncio.to_thread(self._remove, name, "")
        return int(result.code == local.EX_OK)

    def _read(self, name: str) -> tuple[bytes, int, str] | None:
        """The file's bytes, owner and transfer key; None when it was refused unread."""
        try:
            fd = os.open(self._folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._remove(name, f"cannot be opened ({exc.strerror})")
            return None
        try:
            info = os.fstat(fd)
            problem = self._refusal(info)
            if problem:
                self._remove(name, problem)
                return None
            data = _read_all(fd, info.st_size)
        finally:
            os.close(fd)
        key = f"maildrop:{info.st_uid}:{name}:{info.st_ino}:{info.st_mtime_ns}"
        return data, info.st_uid, key

    def _refusal(self, info: os.stat_result) -> str:
        """Why a maildrop file is removed unread, or ''."""
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return "not a plain file with one link"
        if info.st_uid in (0, self._own_uid):
            return "owned by root or the daemon, which never use the maildrop"
        if info.st_size > self._limit:
            return "larger than smtp.max_message_size"
        return ""

    def _remove(self, name: str, why: str) -> None:
        """Delete a maildrop entry, logging why when it was refused."""
        if why:
            event(log, NOQUEUE, "reject", level=logging.WARNING, command="maildrop",
                  file=name, reply=why)
        try:
            os.unlink(self._folder / name)
        except FileNotFoundError:
            pass


def _read_all(fd: int, size: int) -> bytes:
    """Read at most `size` + 1 octets (a file still growing is caught by decode)."""
    chunks, left = [], size + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
