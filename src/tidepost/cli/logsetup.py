"""Where the mail log goes: standard error, syslog, a file (docs/LOGGING.md).

`setup_logging(config, daemon=...)` installs one formatter for every
handler: `TIMESTAMP HOST tidepost[PID]: LEVEL COMPONENT: MESSAGE`, the
component named after the part of tidepost that logged (smtpd, submit,
pickup, qmgr, delivery, admin, relay, node).  The daemon always logs to
standard error (the foreground, journald) and also to `log.syslog` /
`log.file` when set.  Other commands log to those when set, else to
standard error, so that a delivery made by `tidepost flush` or
`sendmail -q` is logged somewhere whatever the configuration.
Config keys read: log.level, log.syslog, log.syslog_socket, log.file, hostname.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import datetime

from tidepost.config.schema import Config

# Logger name prefixes (longest first wins) -> the component the log names.
COMPONENTS = (
    ("tidepost.smtp_server.turn", "relay"), ("tidepost.smtp_server", "smtpd"),
    ("tidepost.submission", "submit"), ("tidepost.control.pickup", "pickup"),
    ("tidepost.control", "control"), ("tidepost.manager", "qmgr"),
    ("tidepost.dispatch", "qmgr"), ("tidepost.delivery", "delivery"),
    ("tidepost.smtp_client", "delivery"), ("tidepost.resolver", "dns"),
    ("tidepost.admin", "admin"), ("tidepost.relay", "relay"), ("tidepost", "node"),
)


def component_of(logger_name: str) -> str:
    """The log's component name for a logger."""
    for prefix, name in COMPONENTS:
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return name
    return logger_name.rsplit(".", 1)[-1] or "node"


class MailLogFormatter(logging.Formatter):
    """One line per event in the docs/LOGGING.md format."""

    def __init__(self, hostname: str, with_time: bool = True):
        super().__init__()
        self._hostname = hostname
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        """`TIMESTAMP HOST tidepost[PID]: level component: message` (no time for syslog)."""
        text = record.getMessage().replace("\n", " ")
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        head = f"tidepost[{record.process}]: {record.levelname.lower()} " \
               f"{component_of(record.name)}: "
        if not self._with_time:
            return head + text
        stamp = datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")
        return f"{stamp} {self._hostname} {head}{text}"


def setup_logging(config: Config | None, daemon: bool = False,
                  level: int | None = None) -> None:
    """Install the handlers; `level` overrides log.level (serve -v)."""
    hostname = config.hostname if config is not None else "localhost"
    handlers: list[logging.Handler] = []
    if config is not None and config.log.syslog:
        try:
            syslog = logging.handlers.SysLogHandler(
                config.log.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        except OSError as exc:
            print(f"tidepost: log.syslog: {config.log.syslog_socket}: {exc.strerror}; "
                  "logging to standard error", file=sys.stderr)
        else:
            syslog.setFormatter(MailLogFormatter(hostname, with_time=False))
            handlers.append(syslog)
    if config is not None and config.log.file:
        handlers.append(logging.handlers.WatchedFileHandler(config.log.file, delay=True))
    if daemon or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(MailLogFormatter(hostname))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    chosen = config.log.level.upper() if config is not None else "INFO"
    root.setLevel(level if level is not None else getattr(logging, chosen))
