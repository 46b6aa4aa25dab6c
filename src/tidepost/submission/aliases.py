"""Local recipients: aliases, configured users and system accounts.

The aliases file uses the familiar /etc/aliases syntax (`name: target, ...`,
`#` comments, continuation lines starting with white space).  A target is a
local name (expanded again, up to 10 levels) or a full address (forwarded).
Program (`|cmd`) and file (`/path`) targets are refused at load: a queue that
runs commands from a text file is a security hole we do not need.  So is
every target that is neither a valid local part nor a valid address, with
its file and line: an alias that silently expanded to nothing would refuse
mail only at the end of DATA.

`postmaster` always resolves (RFC 5321 4.5.1): to its alias if there is one,
else to the user `postmaster`, else (system accounts on) to `root` and its
alias, else to the mailbox `postmaster`.  `user+detail` resolves like `user`.
Config keys read: local.domains, local.aliases_file, local.users,
local.system_users.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from tidepost.address import Address, AddressError, check_local_part, parse_mailbox
from tidepost.config.schema import Config
from tidepost.errors import ConfigError

MAX_DEPTH = 10
BUILTIN = {"mailer-daemon": ["postmaster"], "abuse": ["postmaster"]}


def parse_aliases(text: str, source: str) -> dict[str, list[str]]:
    """Parse aliases text into name -> targets; ConfigError names file:line."""
    aliases: dict[str, list[str]] = {}
    problems: list[str] = []
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and logical:
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + line.strip())
        else:
            logical.append((number, line.strip()))
    first_line: dict[str, int] = {}
    for number, line in logical:
        name, colon, rest = line.partition(":")
        name = name.strip().lower()
        targets = [t.strip() for t in rest.split(",") if t.strip()]
        if not colon or not name or not targets:
            problems.append(f"{source}:{number}: expected 'name: target, ...'")
        elif any(t[0] in "|/" for t in targets):
            problems.append(f"{source}:{number}: {name}: program and file targets are "
                            "not supported")
        elif (bad := next((t for t in targets if not _valid_target(t)), None)) is not None:
            problems.append(f"{source}:{number}: {name}: {bad!r} is neither a local name "
                            "nor an address")
        elif name in first_line:
            problems.append(f"{source}:{number}: {name}: defined again (first on line "
                            f"{first_line[name]})")
        else:
            first_line[name] = number
            aliases[name] = targets
    if problems:
        raise ConfigError(problems)
    return aliases


def _valid_target(target: str) -> bool:
    """True for a local part (`bob`) or a mailbox (`bob@example.org`)."""
    try:
        if "@" in target:
            parse_mailbox(target)
        else:
            check_local_part(target)
    except AddressError:
        return False
    return True


class Aliases:
    """Answers 'does this local user exist?' and 'where does it go?'."""

    def __init__(self, config: Config, aliases: dict[str, list[str]] | None = None):
        self._primary = config.local.domains[0] if config.local.domains else \
            config.hostname.lower()
        self._users = {u.lower() for u in config.local.users}
        self._system_users = config.local.system_users
        if aliases is None:
            aliases = load_aliases_file(config.local.aliases_file)
        self._aliases = {**BUILTIN, **aliases}

    def replace(self, aliases: dict[str, list[str]]) -> None:
        """Swap in a re-read aliases table (SIGHUP)."""
        self._aliases = {**BUILTIN, **aliases}

    @property
    def primary_domain(self) -> str:
        """The local domain expanded local names are written with."""
        return self._primary

    def exists(self, local_part: str) -> bool:
        """True when `local_part` is an alias, a configured or a system user."""
        name = self._base(local_part.lower())
        return name == "postmaster" or name in self._aliases or self._is_user(name)

    def expand(self, local_part: str, domain: str = "") -> list[Address]:
        """Final recipients for a local name (aliases followed recursively).

        Local names keep the domain the mail was addressed to (the primary
        local domain when it had none), so Delivered-To shows what was asked.
        """
        out: list[Address] = []
        self._expand(local_part.lower(), domain or self._primary, 0, set(), out)
        return out

    def _expand(self, name: str, domain: str, depth: int, seen: set[str],
                out: list[Address]) -> None:
        """Depth-limited expansion; a name seen twice stops the loop there."""
        base = self._base(name)
        if base in self._aliases and base not in seen and depth < MAX_DEPTH:
            seen.add(base)
            for target in self._aliases[base]:
                if "@" in target:
                    try:
                        out.append(parse_mailbox(target))
                    except AddressError:
                        continue
                else:
                    self._expand(target.lower(), domain, depth + 1, seen, out)
            return
        if base == "postmaster" and self._system_users and not self._is_user(base):
            # No alias, no account: root, as the aliases file `tidepost install` writes
            self._expand("root", domain, depth + 1, seen, out)
            return
        out.append(Address(base, domain))

    def _base(self, name: str) -> str:
        """`user+detail` -> `user` when `user` exists and `user+detail` does not."""
        base = name.split("+", 1)[0]
        if (base != name and _valid_target(base) and name not in self._aliases
                and not self._is_user(name)):
            return base
        return name  # `+x` or `r.+x` has no user before the +: it stays whole

    def _is_user(self, name: str) -> bool:
        """True for configured users and, if enabled, system accounts."""
        if name in self._users:
            return True
        if not self._system_users:
            return False
        try:
            pwd.getpwnam(name)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            return False
        return True


def load_aliases_file(path: str) -> dict[str, list[str]]:
    """Read the aliases file named in the config ('' means none)."""
    if not path:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read aliases file: {exc.strerror}"]) from None
    return parse_aliases(text, path)
