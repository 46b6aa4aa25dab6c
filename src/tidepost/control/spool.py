"""The spool's folders: where each thing lives, who owns it, and its mode.

    SPOOL/                  0755  the daemon's account (system.user)
      queue.sqlite*         0600  the queue (never readable by local users)
      dns-cache.sqlite*     0600  ledger.jsonl 0600, control.sock 0600
      usage.sqlite*         0600  the link meter (bytes per sender)
      public/               0755  submit.sock 0666: local users hand mail to the daemon
      maildrop/             3733  setgid + sticky: users drop files they cannot
                                  list or read back, and cannot touch others'
      mail/                 0755  default Maildirs, each its user's own, 0700
      control/              0755  qmail-style flag files (root and the daemon)

`prepare(spool, owner)` makes the folders with these modes; started as root,
it gives the spool and the files in it that root left behind (a `flush` run
by root before the daemon ever started, say) to `owner`, never touching
what belongs to anyone else (users' Maildirs), and makes the stores
(*.sqlite*) 0600 again if something left them readable by others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tidepost.accounts import Account

PUBLIC = "public"
SUBMIT_SOCKET = "public/submit.sock"
MAILDROP = "maildrop"
FOLDERS = {"": 0o755, PUBLIC: 0o755, MAILDROP: 0o3733, "mail": 0o755, "control": 0o755}


def submit_socket(spool: Path) -> Path:
    """Where local users reach the running daemon."""
    return spool / SUBMIT_SOCKET


def maildrop(spool: Path) -> Path:
    """Where local users leave mail while no daemon runs."""
    return spool / MAILDROP


def prepare(spool: Path, owner: Account | None) -> None:
    """Make the spool's folders with their modes; as root, give root's leftovers to `owner`."""
    for name, mode in FOLDERS.items():
        folder = spool / name
        folder.mkdir(parents=True, exist_ok=True)
        if owner is not None and folder.stat().st_uid != owner.uid:
            os.chown(folder, owner.uid, owner.gid)
        if stat.S_IMODE(folder.stat().st_mode) != mode and _ours(folder):
            os.chmod(folder, mode)
    if owner is not None:
        _adopt_root_files(spool, owner)
    _make_stores_private(spool)


def _make_stores_private(spool: Path) -> None:
    """The stores 0600 again where others may read them (made by an older tidepost, say)."""
    for entry in os.scandir(spool):
        if ".sqlite" in entry.name and entry.is_file(follow_symlinks=False) and \
                stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & 0o077 and \
                _ours(Path(entry.path)):
            os.chmod(entry.path, 0o600)


def _ours(path: Path) -> bool:
    """True when this process may change `path`'s mode (it owns it, or is root)."""
    return os.geteuid() in (0, path.stat().st_uid)


def _adopt_root_files(spool: Path, owner: Account) -> None:
    """Give files root created directly in the spool (or control/) to `owner`."""
    for folder in (spool, spool / "control"):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_uid == 0:
                os.chown(entry.path, owner.uid, owner.gid, follow_symlinks=False)
