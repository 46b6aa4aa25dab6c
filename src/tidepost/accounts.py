"""Unix accounts: who a process is, who owns what, and giving up root.

tidepost started as root (`serve`, or an admin's command) does what needs
root first — bind port 25, start the local delivery helper, make the spool
its account's — and then becomes `system.user` for good (setgroups, setgid,
setuid, in that order; a failure to drop is fatal, never ignored).  Started
as anyone else it stays who it is.  Account lookups go to the local
password database (NSS), never to a network service of ours.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path


class AccountError(Exception):
    """An account is missing, or the switch to it failed."""


@dataclass(frozen=True, slots=True)
class Account:
    """One Unix account, as the password database knows it."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> Account:
        """An Account from a pwd entry."""
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def lookup(name: str) -> Account | None:
    """The account called `name`, or None."""
    try:
        return Account.from_passwd(pwd.getpwnam(name))
    except KeyError:
        return None


def by_uid(uid: int) -> Account | None:
    """The account with this uid, or None."""
    try:
        return Account.from_passwd(pwd.getpwuid(uid))
    except KeyError:
        return None


def login_of(uid: int) -> str:
    """The login name of `uid`, or the number itself when it has none."""
    account = by_uid(uid)
    return account.name if account else str(uid)


def current() -> Account:
    """The account this process runs as."""
    uid = os.geteuid()
    return by_uid(uid) or Account(str(uid), uid, os.getegid(), str(Path.home()))


def is_root() -> bool:
    """True while this process has root's effective uid."""
    return os.geteuid() == 0


def become(account: Account) -> None:
    """Give up root for `account` irrevocably; AccountError when that fails."""
    if os.geteuid() == account.uid and os.getuid() == account.uid:
        return
    try:
        os.setgroups(os.getgrouplist(account.name, account.gid))
        os.setgid(account.gid)
        os.setuid(account.uid)
    except OSError as exc:
        raise AccountError(f"cannot switch to user {account.name}: {exc.strerror}") from None
    if os.geteuid() != account.uid or os.getuid() != account.uid:
        raise AccountError(f"still uid {os.geteuid()} after switching to {account.name}")
    os.environ["HOME"] = account.home
    os.environ["USER"] = os.environ["LOGNAME"] = account.name


def can_reach(account: Account, path: str | Path) -> bool:
    """True when `account` may enter every folder on the way to `path` and read it."""
    target = Path(path).resolve()
    groups = set(os.getgrouplist(account.name, account.gid))
    for folder in (target, *target.parents):
        try:
            info = folder.stat()
        except OSError:
            return False
        if info.st_uid == account.uid:
            allowed = info.st_mode & 0o500 == 0o500
        elif info.st_gid in groups:
            allowed = info.st_mode & 0o050 == 0o050
        else:
            allowed = info.st_mode & 0o005 == 0o005
        if not allowed:
            return False
    return True


def group_name(gid: int) -> str:
    """The name of group `gid`, or the number."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
