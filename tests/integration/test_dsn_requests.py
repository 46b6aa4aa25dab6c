"""RFC 3461 end to end: a real `tidepost serve`, real smtp-sinks, raw SMTP with DSN parameters.

The sender is the local user bob, so every report tidepost writes lands in
his Maildir, where the test reads it.  Three smarthost routes: relayed.test
to a sink that does not offer DSN (smtp-sink -N), dsnhop.test to one that
does (the parameters must arrive there, and tidepost writes no report), and
hard.test to one refusing every RCPT (failure reports).  A second part runs
a relay tidepost and a site tidepost, the site handing its mail over the
batch stream: the parameters cross it and the relay's sink sees them.
"""

from __future__ import annotations

import re
import smtplib
import uuid

import pytest
from test_end_to_end import dsn_report

pytestmark = pytest.mark.integration

SENDER = "bob@site.test"


def route(name: str, domain: str, host: str, port: int) -> dict:
    """An always-open smarthost route for `domain` to host:port."""
    return {"name": name, "domains": [domain], "transport": "smarthost",
            "smarthost": f"[{host}]:{port}", "on_demand": False, "start_held": False}


def send(port: int, recipients: dict[str, list[str]], body: bytes,
         mail_options: tuple[str, ...] = ()) -> None:
    """One transaction, each recipient with its own RCPT parameters."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        code, text = client.mail(SENDER, list(mail_options))
        assert code == 250, text
        for rcpt, options in recipients.items():
            code, text = client.rcpt(rcpt, options)
            assert code == 250, (rcpt, text)
        code, text = client.data(body)
        assert code == 250, text


def message(tok: str) -> bytes:
    return (f"From: {SENDER}\r\nSubject: dsn {tok}\r\n\r\nbody line {tok}\r\n"
            "second body line\r\n").encode()


def reports(node, tok: str) -> list[bytes]:
    """bob's mail that is a report about the message carrying `tok`."""
    return [m for m in node.maildir("bob")
            if tok.encode() in m and b"multipart/report" in m]


@pytest.fixture
def sinks(smtp_sink, sink_port):
    return {"plain": smtp_sink("127.0.0.2", sink_port, options=["-N"]),
            "dsn": smtp_sink("127.0.0.3", sink_port),
            "hard": smtp_sink("127.0.0.4", sink_port, hard=["RCPT"], options=["-N"])}


@pytest.fixture
def node(tidepost_node, sinks, sink_port):
    return tidepost_node(route=[route("plain", "relayed.test", "127.0.0.2", sink_port),
                                route("dsn", "dsnhop.test", "127.0.0.3", sink_port),
                                route("hard", "hard.test", "127.0.0.4", sink_port)])


def test_success_reports_for_mailbox_and_relay_and_none_when_the_next_hop_takes_dsn(node, sinks):
    tok = uuid.uuid4().hex
    send(node.port, {"carol@site.test": ["NOTIFY=SUCCESS", "ORCPT=rfc822;Carol+2Bold@site.test"],
                     "dave@site.test": [],
                     "far@relayed.test": ["NOTIFY=SUCCESS,FAILURE"],
                     "near@dsnhop.test": ["NOTIFY=SUCCESS",
                                          "ORCPT=rfc822;first@dsnhop.test"]},
         message(tok), ("RET=HDRS", f"ENVID=env+2B{tok}"))
    node.wait_queue_empty()
    node.wait_for(lambda: len(reports(node, tok)) >= 2, what="two success reports")
    actions = {}
    for raw in reports(node, tok):
        dsn, fields = dsn_report(raw)
        assert dsn["Subject"] == "Successful Mail Delivery Report"
        assert f"Original-Envelope-Id: env+{tok}".encode() in raw
        for block in fields:
            actions[block["final-recipient"].lower()] = (block["action"],
                                                         block.get("original-recipient"))
    assert actions == {"rfc822; carol@site.test": ("delivered", "rfc822;Carol+old@site.test"),
                       "rfc822; far@relayed.test": ("relayed", None)}
    assert len(reports(node, tok)) == 2  # dave did not ask; near's hop reports itself
    [passed_on] = [m for m in sinks["dsn"].messages() if tok.encode() in m.body]
    args = passed_on.path.read_text(errors="replace")
    assert f"X-Mail-Args: <{SENDER}>" in args and f"ENVID=env+2B{tok}" in args
    assert "RET=HDRS" in args
    assert "NOTIFY=SUCCESS ORCPT=rfc822;first@dsnhop.test" in args
    [plain] = [m for m in sinks["plain"].messages() if tok.encode() in m.body]
    assert "NOTIFY" not in plain.path.read_text(errors="replace")


def test_a_request_sent_with_bdat_is_kept_like_one_sent_with_data(node):
    """CHUNKING and DSN together: the parameters belong to the envelope, not to DATA."""
    tok = uuid.uuid4().hex
    body = message(tok)
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        assert c.has_extn("chunking") and c.has_extn("dsn")
        assert c.mail(SENDER, ["RET=HDRS", f"ENVID=bdat-{tok}"])[0] == 250
        assert c.rcpt("carol@site.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;c@site.test"])[0] == 250
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        code, text = c.getreply()
        assert code == 250, text
    node.wait_for(lambda: reports(node, tok), what="the success report")
    [raw] = reports(node, tok)
    _, [block] = dsn_report(raw)
    assert (block["action"], block["original-recipient"]) == ("delivered", "rfc822;c@site.test")
    assert f"Original-Envelope-Id: bdat-{tok}".encode() in raw


def test_failure_reports_follow_notify_and_ret(node):
    never, full, default = (uuid.uuid4().hex for _ in range(3))
    send(node.port, {"gone@hard.test": ["NOTIFY=NEVER"]}, message(never))
    send(node.port, {"gone@hard.test": ["NOTIFY=FAILURE", "ORCPT=rfc822;x@hard.test"]},
         message(full), ("RET=FULL", "ENVID=full-1"))
    send(node.port, {"gone@hard.test": []}, message(default))
    node.wait_queue_empty()
    node.wait_for(lambda: reports(node, full) and reports(node, default),
                  what="the two failure reports")
    [returned] = reports(node, full)
    dsn, [block] = dsn_report(returned)
    assert block["action"] == "failed" and block["original-recipient"] == "rfc822;x@hard.test"
    # RFC 3464 2.3.6: the Diagnostic-Code of type smtp is the server's reply itself.
    assert re.fullmatch(r"smtp; 5\d\d 5\.\d+\.\d+ .+", block["diagnostic-code"]), block
    assert block["remote-mta"] == "dns; 127.0.0.4"
    assert b"Original-Envelope-Id: full-1" in returned
    assert [p.get_content_type() for p in dsn.iter_parts()][2] == "message/rfc822"
    assert f"body line {full}".encode() in returned
    [headers_only] = reports(node, default)
    assert f"body line {default}".encode() not in headers_only
    assert reports(node, never) == []  # NOTIFY=NEVER: the loss is silent, as asked


def test_bad_dsn_parameters_get_501_and_repeats_555(node):
    with smtplib.SMTP("127.0.0.1", node.port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        assert c.mail(SENDER, ["RET=BODY"])[0] == 501
        assert c.mail(SENDER, ["ENVID=" + "x" * 101])[0] == 501
        assert c.mail(SENDER, ["RET=FULL", "RET=FULL"])[0] == 555
        assert c.mail(SENDER, ["ENVID=ok"])[0] == 250
        code, text = c.rcpt("carol@site.test", ["NOTIFY=NEVER,DELAY"])
        assert (code, text[:5]) == (501, b"5.5.4")
        assert c.rcpt("carol@site.test", ["ORCPT=rfc822;a+0D+0Ab"])[0] == 501
        assert c.rcpt("carol@site.test", ["NOTIFY=DELAY", "NOTIFY=DELAY"])[0] == 555


def test_the_batch_stream_between_tidepost_nodes_carries_the_request(tidepost_node, smtp_sink,
                                                                    sink_port):
    sink = smtp_sink("127.0.0.3", sink_port)
    relay = tidepost_node(hostname="relay.test", local={"domains": ["relay.test"]},
                          route=[route("out", "*", "127.0.0.3", sink_port)])
    site = tidepost_node(route=[route("uplink", "*", "127.0.0.1", relay.port)])
    tok = uuid.uuid4().hex
    send(site.port, {"far@dsnhop.test": ["NOTIFY=DELAY,FAILURE",
                                         "ORCPT=rfc822;orig@dsnhop.test"]},
         message(tok), ("RET=FULL", f"ENVID={tok}"))
    site.wait_queue_empty()
    relay.wait_queue_empty()
    [arrived] = [m for m in sink.messages() if tok.encode() in m.body]
    args = arrived.path.read_text(errors="replace")
    assert f"RET=FULL ENVID={tok}" in args
    assert "NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@dsnhop.test" in args
    site.stop()  # a clean stop closes the stream, which logs what it carried
    assert "XTIDEPOST BATCH with" in site.log_tail(400)


def test_mail_queued_by_the_schema_before_dsn_is_delivered_after_the_migration(tidepost_node):
    """A spool of schema version 3 (before DSN requests), opened by serve: its mail arrives."""
    import sqlite3

    from tidepost.queue.sqlite import MIGRATIONS, SCHEMA
    node = tidepost_node(start=False)
    node.spool.mkdir(parents=True, exist_ok=True)
    tok = uuid.uuid4().hex
    old = sqlite3.connect(node.spool / "queue.sqlite")
    old.executescript(SCHEMA + MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version=3;")
    body = message(tok)
    old.execute("INSERT INTO messages(queue_id, sender, arrival, size, body_type, smtputf8) "
                "VALUES ('OLDV3000001', ?, 1.0, ?, '7BIT', 0)", (SENDER, len(body)))
    old.execute("INSERT INTO bodies VALUES (1, ?)", (body,))
    old.execute("INSERT INTO recipients(message_id, local, domain, state, next_try) "
                "VALUES (1, 'carol', 'site.test', 'queued', 1.0)")
    old.commit()
    old.close()
    node.start()
    node.wait_for(lambda: any(tok.encode() in m for m in node.maildir("carol")),
                  what="the old mail in carol's Maildir")
    node.wait_queue_empty()
    check = sqlite3.connect(node.spool / "queue.sqlite")
    assert check.execute("PRAGMA user_version").fetchone()[0] == 4
    check.close()
