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

import functools
import logging
import logging.handlers
import os
import sys
from datetime import datetime
from pathlib import Path

from tidepost.config.schema import Config
from tidepost.durable import private_file

# Logger name prefixes (longest first wins) -> the component the log names.
COMPONENTS = (
    ("tidepost.smtp_server.turn", "relay"), ("tidepost.smtp_server", "smtpd"),
    ("tidepost.submission", "submit"), ("tidepost.control.pickup", "pickup"),
    ("tidepost.control", "control"), ("tidepost.manager", "qmgr"),
    ("tidepost.dispatch", "qmgr"), ("tidepost.delivery", "delivery"),
    ("tidepost.smtp_client", "delivery"), ("tidepost.resolver", "dns"),
    ("tidepost.admin", "admin"), ("tidepost.relay", "relay"), ("tidepost", "node"),
)


@functools.lru_cache(maxsize=256)
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
        self._second = -1           # the whole second _stamp is for
        self._stamp = ("", "")      # its ISO date and time, and its UTC offset

    def format(self, record: logging.LogRecord) -> str:
        """`TIMESTAMP HOST tidepost[PID]: level component: message` (no time for syslog)."""
        text = record.getMessage().replace("\n", " ")
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        head = f"tidepost[{_PID.value}]: {record.levelname.lower()} " \
               f"{component_of(record.name)}: "
        if not self._with_time:
            return head + text
        return f"{self._timestamp(record.created)} {self._hostname} {head}{text}"

    def _timestamp(self, created: float) -> str:
        """ISO 8601 local time to the millisecond; the date part worked out once a second."""
        second = int(created)
        if second != self._second:
            whole = datetime.fromtimestamp(second).astimezone().isoformat()
            self._second, self._stamp = second, (whole[:19], whole[19:])
        millis = min(int((created - second) * 1000), 999)
        return f"{self._stamp[0]}.{millis:03d}{self._stamp[1]}"


class _Pid:
    """This process's id, asked once and again after a fork (getpid() is a system
    call, and LogRecord asks it for every line)."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self._refresh)

    def _refresh(self) -> None:
        self.value = os.getpid()


_PID = _Pid()


class PrivateLogFile(logging.handlers.WatchedFileHandler):
    """log.file, made 0600 whatever the umask (it names who mailed whom); reopened on rotation."""

    def _open(self):  # noqa: ANN202 - logging's own signature
        """Create the file 0600 if it is not there, then open it as logging does."""
        private_file(Path(self.baseFilename))
        return super()._open()


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
        handlers.append(PrivateLogFile(config.log.file, delay=True))
    if daemon or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(MailLogFormatter(hostname))
    # Facts no handler writes, each a cost per record (the logging docs'
    # "Optimization"): the caller's file and line (a walk up the stack),
    # the thread, the process id (a system call), the multiprocessing name.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    chosen = config.log.level.upper() if config is not None else "INFO"
    root.setLevel(level if level is not None else getattr(logging, chosen))
