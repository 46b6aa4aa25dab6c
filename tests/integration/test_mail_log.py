"""The mail log traces a message's whole life by its queue id, whoever worked on it.

A message is received over SMTP, deferred by the daemon (the next hop says
4xx), and delivered later by `tidepost flush` while the daemon is down;
`grep QUEUEID` of the log file must show each step, in order, with the
runner that made it, and a refusal before DATA must be there as NOQUEUE.
"""

from __future__ import annotations

import re
import smtplib

import pytest

pytestmark = pytest.mark.integration


def test_grep_by_queue_id_shows_received_deferred_delivered_removed(tidepost_node, smtp_sink,
                                                                       sink_port, tmp_path):
    sink = smtp_sink("127.0.0.2", sink_port, soft=["RCPT"])
    log_file = tmp_path / "mail.log"
    node = tidepost_node(
        log={"file": str(log_file)},
        route=[{"name": "lan", "domains": ["*"], "transport": "smarthost",
                "smarthost": f"[127.0.0.2]:{sink_port}", "on_demand": False}])
    refused = node.send("alice@site.test", ["nobody-at-all@site.test", "x@far.test"],
                        "Subject: traced\r\nMessage-ID: <trace-1@client.test>\r\n\r\nhi\r\n")
    assert "nobody-at-all@site.test" in refused
    node.wait_for(lambda: " deferred " in log_file.read_text(), what="a deferral")
    node.stop()
    sink.start()  # now accepting
    node.flush()
    text = log_file.read_text()
    queue_id = re.search(r"(\w{12}): received from=<alice@site.test>", text).group(1)
    events = [re.search(rf"{queue_id}: (\w+)", line).group(1)
              for line in text.splitlines() if f"{queue_id}:" in line]
    assert events == ["received", "deferred", "delivered", "removed"], text
    [received] = [line for line in text.splitlines() if f"{queue_id}: received" in line]
    assert "message-id=<trace-1@client.test>" in received
    assert "client=client.test[127.0.0.1]" in received and "protocol=ESMTP" in received
    [deferred] = [line for line in text.splitlines() if f"{queue_id}: deferred" in line]
    assert "runner=daemon" in deferred and "to=<x@far.test>" in deferred
    [delivered] = [line for line in text.splitlines() if f"{queue_id}: delivered" in line]
    assert "runner=flush" in delivered and "relay=" in delivered
    assert re.search(r"^\S+ site\.test tidepost\[\d+\]: info qmgr: ", delivered)


def test_the_log_file_line_format_is_stable(tidepost_node, tmp_path):
    log_file = tmp_path / "mail.log"
    node = tidepost_node(log={"file": str(log_file)})
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test") as client:
        client.sendmail("a@site.test", ["alice@site.test"],
                        "Message-ID: <f@client.test>\r\nSubject: x\r\n\r\nx\r\n")
    node.wait_for(lambda: " removed" in log_file.read_text(), what="the message removed")
    line = next(l for l in log_file.read_text().splitlines() if ": received " in l)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d site\.test "
                        r"tidepost\[\d+\]: info submit: [0-9A-F]{12}: received "
                        r"from=<a@site\.test>, size=\d+, nrcpt=1, message-id=<[^>]+>, "
                        r"client=client\.test\[127\.0\.0\.1\], protocol=ESMTP", line), line
