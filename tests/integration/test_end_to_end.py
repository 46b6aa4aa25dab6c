"""End to end: a real `tidepost serve`, real unbound, real smtp-sink receivers.

The zone below is served by unbound; each MX host name points at a loopback
address where a smtp-sink listens on the test's `sink_port` (or where
nothing listens, to play a dead host).  Local users are alice, bob, carol
and dave at site.test; remote mail goes over the always-up route `internet`.
"""

from __future__ import annotations

import email
import email.policy
import re
import uuid

import pytest

pytestmark = pytest.mark.integration

ZONE = [
    "example.test. MX 10 mx1.example.test.",
    "mx1.example.test. A 127.0.0.2",
    # both MX hosts up: the preferred (lowest value) one gets the mail
    "pref.test. MX 20 mx2.pref.test.",
    "pref.test. MX 10 mx1.pref.test.",
    "mx1.pref.test. A 127.0.0.3",
    "mx2.pref.test. A 127.0.0.4",
    # the preferred MX host is down (nothing listens on 127.0.0.7): the other gets it
    "fallback.test. MX 10 dead.fallback.test.",
    "fallback.test. MX 20 mx2.fallback.test.",
    "dead.fallback.test. A 127.0.0.7",
    "mx2.fallback.test. A 127.0.0.4",
    "nullmx.test. MX 0 .",
    "soft.test. MX 10 mx.soft.test.",
    "mx.soft.test. A 127.0.0.5",
    "hard.test. MX 10 mx.hard.test.",
    "mx.hard.test. A 127.0.0.6",
]


def token() -> str:
    """A unique string to find one message by."""
    return uuid.uuid4().hex


def message(tok: str, sender: str = "alice@site.test", to: str = "someone") -> bytes:
    """A small RFC 5322 message carrying `tok` in its subject and body."""
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: test {tok}\r\n\r\n"
            f"token {tok}\r\n.a line starting with a dot\r\n").encode()


def with_token(messages: list[bytes], tok: str) -> list[bytes]:
    """The messages that carry `tok`."""
    return [m for m in messages if tok.encode() in m]


def all_maildir_messages(node) -> list[bytes]:
    """Every message in every Maildir of the node's spool."""
    root = node.spool / "mail"
    if not root.is_dir():
        return []
    return [m for user in sorted(p.name for p in root.iterdir()) for m in node.maildir(user)]


def dsn_report(raw: bytes) -> tuple[email.message.EmailMessage, list[dict[str, str]]]:
    """Parse a DSN: the message and its per-recipient delivery-status fields."""
    dsn = email.message_from_bytes(raw, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report", dsn.get_content_type()
    assert dsn.get_param("report-type") == "delivery-status"
    [status] = [part for part in dsn.iter_parts()
                if part.get_content_type() == "message/delivery-status"]
    text = status.get_payload(decode=False)
    if not isinstance(text, str):  # email may parse the status blocks as sub-messages
        text = "\n\n".join(block.as_string() for block in text)
    blocks = [b for b in re.split(r"\r?\n\r?\n", text.strip()) if b.strip()]
    fields = []
    for block in blocks:
        pairs = re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, re.MULTILINE)
        fields.append({k.lower(): v.strip() for k, v in pairs})
    return dsn, [f for f in fields if "final-recipient" in f]


@pytest.fixture
def dns(unbound):
    """unbound serving ZONE."""
    return unbound(ZONE)


@pytest.fixture
def mx1(smtp_sink, sink_port):
    """The accepting MX host of example.test (127.0.0.2)."""
    return smtp_sink("127.0.0.2", sink_port)


@pytest.fixture
def node(tidepost_node, dns, sink_port):
    """A running tidepost that resolves through `dns` and dials MX hosts on sink_port."""
    return tidepost_node(dns=dns, smtp_port=sink_port)


def test_smtp_and_sendmail_deliver_to_local_maildirs(node):
    by_smtp, by_cli, to_postmaster = token(), token(), token()
    node.send("bob@site.test", ["alice@site.test"], message(by_smtp))
    node.sendmail(["-i", "-f", "alice@site.test", "bob@site.test"], message(by_cli))
    node.sendmail(["-oi", "postmaster"], message(to_postmaster))

    node.wait_for(lambda: with_token(node.maildir("alice"), by_smtp), what="alice's mail")
    node.wait_for(lambda: with_token(node.maildir("bob"), by_cli), what="bob's mail")
    node.wait_for(lambda: with_token(all_maildir_messages(node), to_postmaster),
                  what="postmaster's mail in some Maildir")
    node.wait_queue_empty()
    assert len(with_token(all_maildir_messages(node), by_smtp)) == 1
    assert len(with_token(all_maildir_messages(node), by_cli)) == 1
    assert len(with_token(all_maildir_messages(node), to_postmaster)) == 1
    # nothing bounced: alice holds exactly the message bob sent her
    assert len(node.maildir("alice")) == 1


def test_unknown_local_user_is_refused_at_rcpt(node):
    import smtplib
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        node.send("bob@site.test", ["nosuchuser@site.test"], message(token()))
    code = refused.value.recipients["nosuchuser@site.test"][0]
    assert 500 <= code < 600


def test_remote_mail_is_delivered_to_the_mx_host(node, mx1):
    by_smtp, by_cli = token(), token()
    node.send("alice@site.test", ["user@example.test", "other@example.test"], message(by_smtp))
    node.sendmail(["-i", "-f", "bob@site.test", "user@example.test"], message(by_cli))

    node.wait_for(lambda: len(mx1.messages()) >= 2, what="two deliveries at the sink")
    node.wait_queue_empty()
    received = {tok: [m for m in mx1.messages() if tok.encode() in m.body]
                for tok in (by_smtp, by_cli)}
    [first] = received[by_smtp]
    assert first.sender == "alice@site.test"
    assert sorted(first.recipients) == ["other@example.test", "user@example.test"]
    assert b"\n.a line starting with a dot\n" in first.body  # dot-stuffing undone at the sink
    [second] = received[by_cli]
    assert (second.sender, second.recipients) == ("bob@site.test", ("user@example.test",))


def test_mx_preference_order_and_fallback(node, smtp_sink, sink_port):
    primary = smtp_sink("127.0.0.3", sink_port)
    secondary = smtp_sink("127.0.0.4", sink_port)
    preferred, fallen_back = token(), token()
    node.send("alice@site.test", ["a@pref.test"], message(preferred))
    node.send("alice@site.test", ["b@fallback.test"], message(fallen_back))

    node.wait_for(lambda: primary.recipients() == ["a@pref.test"], what="pref.test delivery")
    node.wait_for(lambda: secondary.recipients() == ["b@fallback.test"],
                  what="fallback.test delivery to the second MX host")
    node.wait_queue_empty()
    assert primary.recipients() == ["a@pref.test"]
    assert secondary.recipients() == ["b@fallback.test"]


def test_null_mx_domain_bounces_to_local_sender(node):
    tok = token()
    node.send("alice@site.test", ["nobody@nullmx.test"], message(tok))

    [raw] = node.wait_for(lambda: node.maildir("alice"), what="a DSN for alice")
    _, fields = dsn_report(raw)
    assert [(f["action"], f["status"]) for f in fields] == [("failed", "5.1.10")]
    assert fields[0]["final-recipient"].lower() == "rfc822; nobody@nullmx.test"
    assert tok.encode() in raw  # the original headers come back
    node.wait_queue_empty()


def test_temporary_failure_stays_queued_and_is_retried(node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.5", sink_port, soft=["RCPT"])
    tok = token()
    node.send("alice@site.test", ["later@soft.test"], message(tok))

    def deferred_listing() -> str:
        listing = node.queue()
        return listing if "later@soft.test" in listing and "retry " in listing else ""

    listing = node.wait_for(deferred_listing, what="the recipient deferred")
    assert "4.3.0" in listing or "450" in listing, listing
    # min_backoff 1s, max_backoff 2s: within 4s it is tried (and refused) again
    attempts = node.wait_for(lambda: _attempts(node, "later@soft.test") >= 2 and
                             _attempts(node, "later@soft.test"), timeout=15,
                             what="a second attempt")
    assert attempts >= 2
    assert sink.messages() == []

    sink.start()  # the same host now accepts
    node.wait_for(lambda: sink.recipients() == ["later@soft.test"], what="the retry delivered")
    node.wait_queue_empty()
    assert tok.encode() in sink.messages()[0].body
    assert node.maildir("alice") == []  # delivered in the end: no DSN, no delay warning


def _attempts(node, recipient: str) -> int:
    """How many delivery attempts the daemon logged for `recipient`."""
    return sum(1 for line in node.log_path.read_text(errors="replace").splitlines()
               if f"to=<{recipient}>" in line)


def test_permanent_failure_returns_a_dsn_to_the_sender(node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.6", sink_port, hard=["RCPT"])
    tok = token()
    node.send("alice@site.test", ["gone@hard.test"], message(tok))

    [raw] = node.wait_for(lambda: node.maildir("alice"), what="a DSN for alice")
    dsn, fields = dsn_report(raw)
    assert len(fields) == 1
    assert fields[0]["action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", fields[0]["status"]), fields[0]
    assert fields[0]["final-recipient"].lower() == "rfc822; gone@hard.test"
    assert dsn["To"] and "alice@site.test" in dsn["To"]
    assert tok.encode() in raw
    node.wait_queue_empty()
    assert sink.messages() == []


def test_a_bounce_is_never_bounced(node, smtp_sink, sink_port):
    hard = smtp_sink("127.0.0.6", sink_port, hard=["RCPT"])
    first, second = token(), token()
    node.send("", ["gone@hard.test"], message(first, sender="MAILER-DAEMON@elsewhere.test"))
    node.send("", ["nobody@nullmx.test"], message(second, sender="MAILER-DAEMON@elsewhere.test"))

    node.wait_queue_empty()
    assert all_maildir_messages(node) == []  # no DSN anywhere, not even to postmaster
    assert hard.messages() == []


def test_config_check_accepts_a_good_file_and_explains_a_bad_one(node, tmp_path):
    good = node.cli("config", "check", "-c", str(node.config_path), check=False)
    assert good.returncode == 0, good

    bad = tmp_path / "bad.toml"
    bad.write_text('hostname = "site.test"\n\n[queue]\nmin_backoff = "soon"\n'
                   'no_such_key = 1\n')
    done = node.cli("config", "check", "-c", str(bad), check=False)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 1, output
    assert re.search(rf"^{re.escape(str(bad))}:4: queue\.min_backoff: .+", output, re.M) \
        or re.search(r"bad\.toml:4: queue\.min_backoff: .+", output), output
    assert re.search(r"bad\.toml:5: queue\.no_such_key: .+", output), output
