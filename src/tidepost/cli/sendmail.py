"""`tidepost sendmail` / `tidepost-sendmail` (and the sendmail, mailq, newaliases links).

Reads a message on standard input and hands it to the mail system; exit 0
means it is on stable storage (fsync'd).  No DNS, and no daemon needed:
1. to the running daemon over its submission socket, which knows from the
   kernel who is sending (control/pickup.py);
2. else, when this user may write the queue (the spool's account, or root),
   straight into the queue;
3. else into the maildrop folder, which the daemon empties when it starts.
The rules (true sender, -f only for trusted users, headers) are
submission/local.py's in all three cases.

Flags: -t (recipients from To/Cc/Bcc; Bcc removed), -i / -oi (a lone "."
does not end input), -f/-r FROM, -F NAME, -C/-c CONFIG, -bm (default),
-bp (list the queue), -bs (SMTP on standard input/output), -q[INTERVAL]
(run the queue once), -qR DOMAIN (run the queue for DOMAIN), and the DSN
requests of RFC 3461 as sendmail and Postfix take them: -N never or a list
of success, failure, delay (every recipient), -R full|hdrs, -V ENVID.  Other
common flags (-o*, -v, -B, -X, -L, -U, -G, -O*) are accepted and ignored,
so existing scripts keep working.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from tidepost.cli.common import config_or_exit, spool_owner_or_exit
from tidepost.cli.local_transport import hand_over
from tidepost.config.load import DEFAULT_CONFIG
from tidepost.config.schema import Config
from tidepost.dsnparams import DsnParameterError, parse_envid, parse_notify, parse_ret, xtext_encode
from tidepost.submission.local import LocalRequest
from tidepost.submission.local_message import from_local_input

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL = 0, 64, 65, 67, 70, 75
IGNORED_WITH_VALUE = ("-B", "-X", "-L", "-h")
IGNORED = ("-v", "-U", "-G", "-bm", "-em", "-ep", "-eq")


@dataclass
class Options:
    """Parsed sendmail command line."""

    mode: str = "deliver"            # deliver, list, smtp, flush, aliases
    recipients: list[str] = field(default_factory=list)
    from_headers: bool = False       # -t
    dot_ends_input: bool = True      # cleared by -i / -oi
    sender: str | None = None        # -f / -r
    full_name: str | None = None     # -F
    config: str | None = None        # -C / -c
    flush_domain: str | None = None  # -qR
    notify: str = ""                 # -N (RFC 3461 NOTIFY, for every recipient)
    ret: str = ""                    # -R full|hdrs
    envid: str = ""                  # -V


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
    elif arg == "-bi":
        opts.mode = "aliases"
    elif arg[:2] in DSN_FLAGS:
        _dsn_flag(arg, args, opts)
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


DSN_FLAGS = ("-N", "-R", "-V")


def _dsn_flag(arg: str, args, opts: Options) -> None:
    """-N, -R or -V: checked here, so that a typo is an error, not a silent default."""
    value = _value(arg, 2, args)
    try:
        if arg.startswith("-N"):
            opts.notify = parse_notify(value)
        elif arg.startswith("-R"):
            opts.ret = parse_ret(value)
        else:  # -V takes the id as text; it travels as xtext (RFC 3461 4.4)
            opts.envid = parse_envid(xtext_encode(value))
    except DsnParameterError as exc:
        raise UsageError(f"{arg[:2]} {value}: {exc}") from None


USAGE = f"""\
usage: sendmail [flags] [RECIPIENT ...] < message
       mailq [-C CONFIG]          (same as sendmail -bp)
       newaliases [-C CONFIG]     (check the aliases file, have the daemon re-read it)

Submits the message on standard input; exit 0 means it is on stable storage.
The envelope sender is you (USER@hostname); -f is honoured for trusted users
(system.trusted_users, root, the mail system's account) or for your own address.

  -t            recipients from the To, Cc and Bcc headers too (Bcc is removed)
  -i, -oi       a line with a single dot does not end the message
  -f ADDR, -r ADDR   envelope sender (see above)
  -F NAME       full name for the From header, when one is added
  -C FILE       configuration file (default: {DEFAULT_CONFIG})
  -bm           deliver mail (the default)
  -bp           list the queue (mailq)
  -bs           speak SMTP on standard input and output
  -bi           check the aliases file, have the daemon re-read it (newaliases)
  -q[TIME]      run the queue once now;  -qR DOMAIN: only for DOMAIN
  -N DSN        delivery reports wanted (RFC 3461): never, or any of success,failure,delay
  -R full|hdrs  a failure report returns the whole message or its headers only
  -V ENVID      an envelope id, quoted back in every report
  -o*, -O*, -v, -B, -X, -L, -U, -G, -em, -ep, -eq, -h N: accepted, ignored

Exit codes: 0 queued, 64 usage, 65 bad data, 67 unknown user or no route,
75 try again later, 77 not permitted, 78 configuration error."""


def run(argv: list[str]) -> int:
    """Run `tidepost sendmail ARGS`."""
    if "--help" in argv:
        print(USAGE)
        return EX_OK
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"tidepost sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    if opts.mode == "aliases":
        from tidepost.cli import newaliases
        return newaliases.run(["-C", opts.config] if opts.config else [])
    config = config_or_exit(opts.config)
    if opts.mode == "list":
        from tidepost.cli import queue
        spool_owner_or_exit(config)
        return queue.show(config)
    if opts.mode == "flush":
        from tidepost.cli import flush
        return flush.flush_now(config, route=None, domain=opts.flush_domain,
                               runner="sendmail -q")
    if opts.mode == "smtp":
        from tidepost.cli import stdio_smtp
        return stdio_smtp.run(config)
    return submit_from_stdin(config, opts, sys.stdin.buffer.read())


def run_as(personality: str, argv: list[str]) -> int:
    """The program called by another name: sendmail, mailq or newaliases."""
    if personality == "mailq":
        if "--help" in argv:
            print(USAGE)
            return EX_OK
        return run(["-bp", *argv])
    if personality == "newaliases":
        from tidepost.cli import newaliases
        return newaliases.run(argv)
    return run(argv)


def submit_from_stdin(config: Config, opts: Options, raw: bytes) -> int:
    """Hand the message on standard input to the mail system; the exit code says how."""
    if not opts.recipients and not opts.from_headers:
        print("tidepost sendmail: no recipients given", file=sys.stderr)
        return EX_USAGE
    request = LocalRequest(tuple(opts.recipients), from_local_input(raw, opts.dot_ends_input),
                           opts.from_headers, opts.sender, opts.full_name, opts.notify,
                           opts.ret, opts.envid)
    result = hand_over(config, request)
    if result.code != EX_OK:
        print(f"tidepost sendmail: {result.text}", file=sys.stderr)
    return result.code


def main() -> int:
    """Entry point of the `tidepost-sendmail` script."""
    sys.exit(run(sys.argv[1:]))
