"""Partly received batch messages, kept in the spool so that a new session resumes them.

`PartialStore(folder, lifetime, space, owner)` keeps one file per transfer
id and owner, `SPOOL/batch-partial/<owner digest>-<transfer-id>`, holding
the first octets of the message as received.  Transfer ids are the
client's choice, so the owner (the client's transfer namespace, or its
address) keeps one client from resuming, probing or dropping another's
message.  `append(tid, octets, start)` adds to it; `sync(tids)` makes
what was appended durable (fsync) before the XBATCH chunk that carried it
is acknowledged, so the length the file has after a crash or a cut link is
never more than what the client was told (it may be less, never wrong);
`held(tid)` is that length, what XRESUME answers; `load(tid)` reads it
back; `drop(tid)` forgets it once the message is queued or refused.
`expire(now)` deletes files untouched for `lifetime` seconds
(`smtp.batch_partial_lifetime`), called when a batch session starts.

All files together stay within `space` octets (`smtp.batch_partial_space`):
an append that would pass it first deletes the least recently written
other files; a message larger than `space` is not kept.  A partial file
that is gone (forgotten so, expired, or its disk full) is never made again
in the middle of its message, which would fill its start with zeros: the
rest of that message is simply not kept, and XRESUME answers 0 for it.
The session keeps the message in memory either way: keeping is only
what lets a cut session resume.
Transfer ids are checked by the codec (letters, digits, `._-`), so they
are safe file names.  Blocking file calls: the session runs them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from tidepost.durable import sync_path

FOLDER = "batch-partial"


class PartialStore:
    """Partial messages by transfer id, in one spool folder."""

    def __init__(self, folder: Path, lifetime: float, space: int, owner: str = ""):
        self.folder = folder
        self.lifetime = lifetime
        self.space = space
        self._prefix = hashlib.sha256(owner.encode()).hexdigest()[:16] + "-" if owner else ""

    def _path(self, transfer_id: str) -> Path:
        return self.folder / (self._prefix + transfer_id)

    def held(self, transfer_id: str) -> int:
        """Octets of the message held durably; 0 when none."""
        try:
            return self._path(transfer_id).stat().st_size
        except FileNotFoundError:
            return 0

    def load(self, transfer_id: str, length: int) -> bytes | None:
        """The first `length` octets held, or None when fewer are held."""
        try:
            with open(self._path(transfer_id), "rb") as file:
                data = file.read(length)
        except FileNotFoundError:
            return None
        return data if len(data) == length else None

    def append(self, transfer_id: str, octets: bytes, start: int) -> bool:
        """Write `octets` at `start` (the file is cut there first); not yet durable.

        False when the message is not kept (see the module docstring); a
        full disk forgets its file too, rather than failing the session.
        """
        if not self._make_room(transfer_id, start + len(octets)):
            self.drop(transfer_id)
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | (os.O_CREAT if start == 0 else 0)
        try:
            fd = os.open(self._path(transfer_id), flags, 0o600)
        except FileNotFoundError:
            return False  # forgotten mid-message: not made again with a hole
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
            os.write(fd, octets)
        except OSError:
            self.drop(transfer_id)
            return False
        finally:
            os.close(fd)
        return True

    def _make_room(self, transfer_id: str, size: int) -> bool:
        """Delete the least recently written other files until `size` octets fit in `space`."""
        if size > self.space:
            return False
        others = []
        name = self._path(transfer_id).name
        for path in self._files():
            if path.name != name:
                with contextlib.suppress(FileNotFoundError):
                    status = path.stat()
                    others.append((status.st_mtime, status.st_size, path))
        used = sum(size for _, size, _ in others)
        for _, other_size, path in sorted(others):
            if used + size <= self.space:
                break
            path.unlink(missing_ok=True)
            used -= other_size
        return True

    def _files(self) -> list[Path]:
        """The partial files now."""
        return list(self.folder.iterdir()) if self.folder.is_dir() else []

    def sync(self, transfer_ids: list[str]) -> None:
        """fsync the files of `transfer_ids` and the folder (new names)."""
        for transfer_id in transfer_ids:
            with contextlib.suppress(FileNotFoundError):
                sync_path(self._path(transfer_id))
        if transfer_ids and self.folder.is_dir():
            sync_path(self.folder)

    def drop(self, transfer_id: str) -> None:
        """Forget a partial message (queued, refused or restarted)."""
        try:
            self._path(transfer_id).unlink()
        except FileNotFoundError:
            pass

    def expire(self, now: float) -> int:
        """Delete partial messages untouched for `lifetime` seconds; how many."""
        removed = 0
        for path in self._files():
            try:
                if path.stat().st_mtime + self.lifetime < now:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
