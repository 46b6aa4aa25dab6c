"""Partly received batch messages, kept in the spool so that a new session resumes them.

`PartialStore(folder, lifetime)` keeps one file per transfer id,
`SPOOL/batch-partial/<transfer-id>`, holding the first octets of the
message as received.  `append(tid, octets)` adds to it; `sync(tids)` makes
what was appended durable (fsync) before the XBATCH chunk that carried it
is acknowledged, so the length the file has after a crash or a cut link is
never more than what the client was told (it may be less, never wrong);
`held(tid)` is that length, what XRESUME answers; `load(tid)` reads it
back; `drop(tid)` forgets it once the message is queued or refused.
`expire(now)` deletes files untouched for `lifetime` seconds
(`smtp.batch_partial_lifetime`), called when a batch session starts.
Transfer ids are checked by the codec (letters, digits, `._-`), so they
are safe file names.  Blocking file calls: the session runs them in a thread.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tidepost.durable import sync_path

FOLDER = "batch-partial"


class PartialStore:
    """Partial messages by transfer id, in one spool folder."""

    def __init__(self, folder: Path, lifetime: float):
        self.folder = folder
        self.lifetime = lifetime

    def _path(self, transfer_id: str) -> Path:
        return self.folder / transfer_id

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

    def append(self, transfer_id: str, octets: bytes, start: int) -> None:
        """Write `octets` at `start` (the file is cut there first); not yet durable."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(transfer_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
            os.write(fd, octets)
        finally:
            os.close(fd)

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
        if not self.folder.is_dir():
            return 0
        removed = 0
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime + self.lifetime < now:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
