"""fsync for paths: what makes a file's content or a folder's names survive a power cut.

Also `private_file`: a store created 0600 whatever the umask (SQLite makes
its -wal and -shm files with the mode of the database file).
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: the names made or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 unless it exists (a store only its owner reads)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    return path
