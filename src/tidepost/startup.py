"""Process set-up before the event loop: the account, the spool, root's last acts.

`run_account(config)` decides who the process will be: started as root,
`system.user` (default `tidepost`; "root" keeps root); when that account
does not exist, root is kept with a warning (a first run on a fresh
machine; `tidepost install` creates the account and `config check` says
it is missing), and so it is when the account could not load this very
program (a Python living under /root): it would die at its next import.
Started as anyone else: that user.

`prepare_daemon(config)` does, in this order, what `tidepost serve` needs
root for: make the spool and give it to the account, take the spool's
daemon lock, start the local delivery helper (which stays root to write
Maildirs as their owners), bind every SMTP and ODMR listening socket; then
it gives up root for good and sets the umask to 077, so that the queue,
the DNS cache and the ledger are the account's alone.
`become_spool_owner(config)` is the same for the other commands started as
root (queue, flush, link...), so nothing in the spool ever ends up root's.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field

from tidepost.accounts import (Account, AccountError, become, can_reach, current, is_root,
                               lookup)
from tidepost.config.schema import Config
from tidepost.control import spool
from tidepost.control.pidfile import lock_spool
from tidepost.delivery.local_helper import LocalHelper
from tidepost.smtp_server.binding import bind_all

log = logging.getLogger("tidepost.node")


@dataclass
class Startup:
    """What the process prepared while it was still root."""

    account: Account
    bound: dict[str, list[socket.socket]] = field(default_factory=dict)
    helper: LocalHelper | None = None
    lock_fd: int = -1


def run_account(config: Config, warn: bool = False) -> Account:
    """The account this process should run as (see the module docstring).

    With `warn` (the daemon), keeping root is logged as a warning.
    """
    if not is_root():
        return current()
    if config.system.user in ("", "root"):
        if warn:
            log.warning("running as root (system.user = %r): not recommended",
                        config.system.user)
        return current()
    account = lookup(config.system.user)
    if account is None:
        if warn:
            log.warning("user %r does not exist: running as root (`tidepost install` "
                        "creates the account)", config.system.user)
        return current()
    unreachable = [p for p in _program_folders() if not can_reach(account, p)]
    if unreachable:
        if warn:
            log.warning("user %r cannot read this Python installation (%s): running as "
                        "root (`tidepost install` puts one everyone can read in "
                        "/opt/tidepost)", account.name, unreachable[0])
        return current()
    return account


def _program_folders() -> list[str]:
    """Where this program's code lives: the account must be able to load it."""
    import tidepost
    return list(dict.fromkeys([sys.base_prefix, sys.prefix,
                               os.path.dirname(tidepost.__file__)]))


def prepare_daemon(config: Config) -> Startup:
    """Spool, lock, helper, sockets as root; then become the account (see above)."""
    account = run_account(config, warn=True)
    dropping = is_root() and account.uid != 0
    spool.prepare(config.spool_path, account if dropping else None)
    startup = Startup(account)
    startup.lock_fd = lock_spool(config.spool_path)
    if dropping:
        os.fchown(startup.lock_fd, account.uid, account.gid)
    if is_root():
        startup.helper = LocalHelper.start(config.spool_path, config.local.maildir)
    try:
        odmr = config.relay.odmr_listen if (
            config.has_customers or config.relay.credentials_file) else ()
        startup.bound = bind_all(config.smtp.listen)
        startup.bound.update(bind_all(odmr, "relay.odmr_listen"))
        if dropping:
            _become(account, config)
    except BaseException:
        close_startup(startup)
        raise
    os.umask(0o077)
    return startup


def become_spool_owner(config: Config, with_helper: bool = False) -> LocalHelper | None:
    """As root: become the spool's account (after starting the helper if asked)."""
    if not is_root():
        return None
    account = run_account(config)
    if account.uid == 0:
        return LocalHelper.start(config.spool_path, config.local.maildir) \
            if with_helper else None
    spool.prepare(config.spool_path, account)
    helper = LocalHelper.start(config.spool_path, config.local.maildir) \
        if with_helper else None
    _become(account, config)
    return helper


def _become(account: Account, config: Config) -> None:
    """Switch to `account` and check it can still work in the spool."""
    become(account)
    if not os.access(config.spool_path, os.R_OK | os.W_OK | os.X_OK):
        raise AccountError(f"user {account.name} cannot use the spool {config.spool}: "
                           "its parent folders must be searchable by that user")


def close_startup(startup: Startup) -> None:
    """Close what prepare_daemon opened (on failure, or after the node ended)."""
    for sockets in startup.bound.values():
        for sock in sockets:
            sock.close()
    if startup.helper is not None:
        startup.helper.close()
