"""The mail log's line format: keys, quoting, and no forged lines or keys."""

import logging
import os

from tidepost.cli.logsetup import MailLogFormatter, component_of
from tidepost.eventlog import line


def test_keys_values_and_none_left_out():
    assert line("3F2A9C01B7E4", "received", from_="<a@b.test>", size=12, message_id=None,
                nrcpt=1) == "3F2A9C01B7E4: received from=<a@b.test>, size=12, nrcpt=1"
    assert line("", "reject", command="RCPT") == "NOQUEUE: reject command=RCPT"


def test_client_text_cannot_break_the_line_or_add_keys():
    text = line("Q", "reject", helo='evil, to=<x@y>\nQ2: delivered "x"', reply="")
    assert text == 'Q: reject helo="evil, to=<x@y>?Q2: delivered \\"x\\"", reply=""'
    assert "\n" not in text


def test_the_formatter_names_the_component_and_level():
    record = logging.LogRecord("tidepost.manager.manager", logging.WARNING, __file__, 1,
                               "%s", ("Q: deferred",), None)
    formatted = MailLogFormatter("ship.test").format(record)
    # os.getpid(), not record.process: setup_logging() (run by other tests in this
    # process) turns LogRecord's own pid off, as the formatter does not need it.
    assert formatted.endswith(" ship.test tidepost[%d]: warning qmgr: Q: deferred"
                              % os.getpid())
    assert MailLogFormatter("h", with_time=False).format(record).startswith("tidepost[")
    assert [component_of(n) for n in ("tidepost.smtp_server.session", "tidepost.submission",
                                      "tidepost.control.pickup", "tidepost.node")] == \
        ["smtpd", "submit", "pickup", "node"]
