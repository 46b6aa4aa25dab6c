"""`tidepost sendmail` / `tidepost-sendmail`: the sendmail-compatible entry.

Reads a message on standard input and writes it straight into the queue
(fsync'd) with no DNS and no daemon needed; exit 0 means queued.  Then it
wakes the daemon, if one runs, so that local mail is delivered at once.

Flags: -t (recipients from To/Cc/Bcc; Bcc removed), -i / -oi (a lone "."
does not end input), -f/-r FROM, -F NAME, -C/-c CONFIG, -bm (default),
-bp (list the queue), -bs (SMTP on standard input/output), -q[INTERVAL]
(run the queue once), -qR DOMAIN (run the queue for DOMAIN).  Other
common flags (-o*, -v, -N, -R, -V, -B, -X, -L, -U, -G, -O*) are accepted
and ignored, so existing scripts keep working.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from dataclasses import dataclass, field
from email.utils import getaddresses

from tidepost.address import Address, AddressError, parse_path
from tidepost.cli.common import config_or_exit
from tidepost.config.schema import Config
from tidepost.model import BodyType, Envelope
from tidepost.submission.headers import header_section
from tidepost.submission.local_message import complete_headers, from_local_input, remove_bcc
from tidepost.submission.submit import ClientInfo, SubmissionRejected

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL = 0, 64, 65, 67, 70, 75
IGNORED_WITH_VALUE = ("-N", "-R", "-V", "-B", "-X", "-L", "-h")
IGNORED = ("-v", "-U", "-G", "-bm", "-em", "-ep", "-eq")


@dataclass
class Options:
    """Parsed sendmail command line."""

    mode: str = "deliver"            # deliver, list, smtp, flush
    recipients: list[str] = field(default_factory=list)
    from_headers: bool = False       # -t
    dot_ends_input: bool = True      # cleared by -i / -oi
    sender: str | None = None        # -f / -r
    full_name: str | None = None     # -F
    config: str | None = None        # -C / -c
    flush_domain: str | None = None  # -qR


class UsageError(Exception):
    """A command line sendmail would not accept either."""


def parse_args(argv: list[str]) -> Options:
    """Parse sendmail flags, accepting the usual spellings and grouping."""
    opts = Options()
    args = iter(argv)
    for arg in args:
        if arg == "--":
            opts.recipients.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        _parse_flag(arg, args, opts)
    return opts


def _value(arg: str, flag_len: int, args) -> str:
    """The value of a flag, attached (-fuser) or separate (-f user)."""
    if len(arg) > flag_len:
        return arg[flag_len:]
    try:
        return next(args)
    except StopIteration:
        raise UsageError(f"option {arg} needs a value") from None


def _parse_flag(arg: str, args, opts: Options) -> None:
    """Apply one flag to `opts`."""
    if arg in ("-t",):
        opts.from_headers = True
    elif arg in ("-i", "-oi"):
        opts.dot_ends_input = False
    elif arg[:2] in ("-f", "-r"):
        opts.sender = _value(arg, 2, args)
    elif arg.startswith("-F"):
        opts.full_name = _value(arg, 2, args)
    elif arg[:2] in ("-C", "-c"):
        opts.config = _value(arg, 2, args)
    elif arg == "-bp":
        opts.mode = "list"
    elif arg == "-bs":
        opts.mode = "smtp"
    elif arg.startswith("-qR"):
        opts.mode, opts.flush_domain = "flush", _value(arg, 3, args)
    elif arg.startswith("-q"):
        opts.mode = "flush"
    elif arg.startswith(IGNORED_WITH_VALUE):
        if len(arg) == 2:
            _value(arg, 2, args)
    elif arg.startswith(("-o", "-O")) or arg in IGNORED or arg.startswith("-b"):
        if arg.startswith("-b") and arg not in ("-bm",):
            raise UsageError(f"mode {arg} is not supported")
    else:
        raise UsageError(f"unknown option {arg}")


def run(argv: list[str]) -> int:
    """Run `tidepost sendmail ARGS`."""
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"tidepost sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    config = config_or_exit(opts.config)
    if opts.mode == "list":
        from tidepost.cli import queue
        return queue.show(config)
    if opts.mode == "flush":
        from tidepost.cli import flush
        return flush.flush_now(config, route=None, domain=opts.flush_domain)
    if opts.mode == "smtp":
        from tidepost.cli import stdio_smtp
        return stdio_smtp.run(config)
    return submit_from_stdin(config, opts, sys.stdin.buffer.read())


def submit_from_stdin(config: Config, opts: Options, raw: bytes) -> int:
    """Queue the message on standard input; the exit code says what happened."""
    login = _login_name()
    try:
        body = from_local_input(raw, opts.dot_ends_input)
        sender = _sender(opts, login, config)
        recipients = [_recipient(r, config) for r in opts.recipients]
        if opts.from_headers:
            recipients += _header_recipients(body, config)
            body = remove_bcc(body)
    except AddressError as exc:
        print(f"tidepost sendmail: bad address: {exc}", file=sys.stderr)
        return EX_DATAERR
    if not recipients:
        print("tidepost sendmail: no recipients given", file=sys.stderr)
        return EX_USAGE
    if len(body) > config.smtp.max_message_size:
        print("tidepost sendmail: message exceeds smtp.max_message_size", file=sys.stderr)
        return EX_DATAERR
    body = complete_headers(body, sender, opts.full_name, config.hostname)
    return asyncio.run(_queue(config, sender, recipients, body, login))


async def _queue(config: Config, sender: Address, recipients: list[Address], body: bytes,
                 login: str) -> int:
    """Validate recipients, commit the message, wake the daemon."""
    from tidepost import node
    from tidepost.control.client import request
    parts = node.build(config)
    try:
        for rcpt in recipients:
            submission = parts.submission
            if submission.is_local_domain(rcpt.domain) and \
                    not submission.local_user_exists(rcpt.local):
                print(f"tidepost sendmail: {rcpt}: unknown local user", file=sys.stderr)
                return EX_NOUSER
            if not submission.has_route(rcpt.domain):
                print(f"tidepost sendmail: {rcpt}: no route serves this domain",
                      file=sys.stderr)
                return EX_NOUSER
        eight_bit = any(b >= 0x80 for b in body)
        envelope = Envelope(sender, tuple(dict.fromkeys(recipients)),
                            BodyType.EIGHT_BIT_MIME if eight_bit else BodyType.SEVEN_BIT,
                            not all(a.is_ascii for a in (sender, *recipients)))
        client = ClientInfo(protocol="local", local_user=login)
        await parts.submission.submit(envelope, body, client)
    except SubmissionRejected as exc:
        print(f"tidepost sendmail: {exc.status} {exc.text}", file=sys.stderr)
        return EX_DATAERR if exc.code >= 500 else EX_TEMPFAIL
    except Exception as exc:  # noqa: BLE001 - exit code must say "not queued"
        print(f"tidepost sendmail: message not queued: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        await parts.queue.close()
    request(config.spool_path, "wake", timeout=2.0)
    return EX_OK


def _login_name() -> str:
    """The submitting user's login name, without asking any network service."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _sender(opts: Options, login: str, config: Config) -> Address:
    """Envelope sender: -f, else login@hostname."""
    if opts.sender is not None:
        if opts.sender in ("", "<>"):
            return Address("", "")
        return _recipient(opts.sender, config)
    return Address(login, config.hostname.lower())


def _recipient(text: str, config: Config) -> Address:
    """Parse a command-line address; a bare name is a local user."""
    text = text.strip()
    if "@" not in text.strip("<>"):
        name = text.strip("<>")
        parse_path(f"<{name}@localhost>")  # validates the local part
        domain = config.local.domains[0] if config.local.domains else config.hostname
        return Address(name.lower() if name.lower() == "postmaster" else name, domain)
    return parse_path(text if text.startswith("<") else f"<{text}>")


def _header_recipients(body: bytes, config: Config) -> list[Address]:
    """Recipients named in To, Cc and Bcc (for -t)."""
    headers = header_section(body).decode("utf-8", "replace").replace("\r\n", "\n")
    values: list[str] = []
    current: str | None = None
    for line in headers.split("\n"):
        if line[:1] in (" ", "\t") and current is not None:
            values[-1] += " " + line.strip()
            continue
        name, _, value = line.partition(":")
        current = name.strip().lower() if name.strip().lower() in ("to", "cc", "bcc") else None
        if current:
            values.append(value)
    return [_recipient(addr, config) for _, addr in getaddresses(values) if addr]


def main() -> int:
    """Entry point of the `tidepost-sendmail` script."""
    sys.exit(run(sys.argv[1:]))

