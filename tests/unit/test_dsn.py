"""Settling outcomes and the RFC 3464 reports they produce."""

import dataclasses
import email
from email import policy

from tidepost.address import Address
from tidepost.manager.settle import add_dsns, settle
from tidepost.model import DeliveryJob, MessageInfo, QueuedRecipient, RecipientDsn
from tidepost.outcomes import Verdict, bounced, deferred, delivered
from tidepost.scheduler.backoff import Backoff

ORIGINAL = b"Subject: hello\r\nFrom: alice@site.test\r\n\r\n" + b"x" * 10000 + b"\r\n"
BACKOFF = Backoff(min_backoff=300, max_backoff=4000, lifetime=86400, delay_warning=3600)


def job(sender=Address("alice", "site.test"), arrival=0.0, attempts=0) -> DeliveryJob:
    info = MessageInfo(7, "ABC123", sender, arrival, len(ORIGINAL))
    rcpts = [QueuedRecipient(i, 7, Address(f"u{i}", "example.test"), attempts) for i in (1, 2, 3)]
    return DeliveryJob(info, rcpts, "uplink", "example.test", ORIGINAL)


def test_outcomes_become_final_or_rescheduled():
    j = job(attempts=2)
    result = settle(j, [delivered(1, "250 ok"), deferred(2, "4.2.0", "busy"),
                        bounced(3, "5.1.1", "550 5.1.1 no such user", "mx.example.test")],
                    BACKOFF, now=100, already_warned=False)
    next_tries = {u.outcome.recipient_id: u.next_try for u in result.updates}
    assert next_tries == {1: None, 2: 100 + 1200, 3: None}
    assert [f.recipient.recipient_id for f in result.failures] == [3]
    assert not result.warned


def test_retry_after_from_a_dead_destination_is_respected():
    result = settle(job(), [deferred(1, "4.4.1", "down", retry_after=5000)], BACKOFF, 0, False)
    assert result.updates[0].next_try == 5000


def test_deferred_past_lifetime_becomes_a_5_4_7_bounce():
    result = settle(job(), [deferred(1, "4.4.1", "connection refused")], BACKOFF, 86400, False)
    [update] = result.updates
    assert update.next_try is None and update.outcome.verdict is Verdict.BOUNCED
    assert update.outcome.status == "5.4.7"


def test_bounce_report_is_rfc3464_with_headers_only():
    j = job()
    said = "host mx.example.test[192.0.2.1]:25 said: 550 5.1.1 no such user (in reply to RCPT TO)"
    result = settle(j, [bounced(3, "5.1.1", said, "mx.example.test",
                                diagnostic="550 5.1.1 no such user")], BACKOFF, 50, False)
    add_dsns(result, j, ORIGINAL, "site.test", 50)
    [dsn] = result.dsns
    assert dsn.sender.is_null and dsn.recipients == (Address("alice", "site.test"),)
    report = email.message_from_bytes(dsn.body, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_string()
    for field in ("Reporting-MTA: dns; site.test", "Final-Recipient: rfc822; u3@example.test",
                  "Action: failed", "Status: 5.1.1", "Remote-MTA: dns; mx.example.test",
                  "Diagnostic-Code: smtp; 550 5.1.1 no such user"):
        assert field in status
    assert said.encode() in dsn.body  # the person's part says who said it
    assert b"x" * 100 not in dsn.body  # the body is not returned
    assert b"Subject: hello" in dsn.body


def test_our_own_diagnosis_is_not_passed_off_as_a_remote_reply():
    j = job()
    result = settle(j, [bounced(1, "5.3.4", "message size 20000 exceeds size limit 1000 of "
                                "host mx.example.test[192.0.2.1]:25", "mx.example.test")],
                    BACKOFF, 50, False)
    add_dsns(result, j, ORIGINAL, "site.test", 50)
    assert b"Diagnostic-Code: x-tidepost; message size 20000 exceeds" in result.dsns[0].body


def test_a_report_on_a_utf8_recipient_is_a_global_delivery_status():
    # RFC 6533 3: a delivery-status part with a UTF-8 address is
    # message/global-delivery-status; message/delivery-status is 7-bit ASCII.
    j = job()
    utf8 = dataclasses.replace(j.recipients[0], address=Address("j\u00f6rg", "example.test"))
    j = dataclasses.replace(j, recipients=[utf8, *j.recipients[1:]])
    result = settle(j, [bounced(1, "5.6.7", "no SMTPUTF8 at the next hop", "mx.example.test"),
                        bounced(2, "5.1.1", "no such user", "mx.example.test")],
                    BACKOFF, 50, False)
    add_dsns(result, j, ORIGINAL, "site.test", 50)
    report = email.message_from_bytes(result.dsns[0].body, policy=policy.default)
    assert [p.get_content_type() for p in report.iter_parts()][1] == \
        "message/global-delivery-status"
    assert "Final-Recipient: utf-8; j\u00f6rg@example.test".encode() in result.dsns[0].body
    ascii_only = settle(job(), [bounced(2, "5.1.1", "no such user")], BACKOFF, 50, False)
    add_dsns(ascii_only, job(), ORIGINAL, "site.test", 50)
    assert b"Content-Type: message/delivery-status" in ascii_only.dsns[0].body


def test_never_bounce_a_bounce():
    j = job(sender=Address("", ""))
    result = settle(j, [bounced(1, "5.1.1", "no such user")], BACKOFF, 50, False)
    add_dsns(result, j, ORIGINAL, "site.test", 50)
    assert result.dsns == [] and result.updates[0].next_try is None


def test_delay_warning_once():
    j = job()
    result = settle(j, [deferred(1, "4.4.1", "down")], BACKOFF, 3600, already_warned=False)
    add_dsns(result, j, ORIGINAL, "site.test", 3600)
    assert result.warned and len(result.dsns) == 1
    assert b"Action: delayed" in result.dsns[0].body
    again = settle(j, [deferred(1, "4.4.1", "down")], BACKOFF, 7200, already_warned=True)
    assert not again.warned


def test_a_held_route_is_not_an_attempt():
    from tidepost.outcomes import not_attempted
    result = settle(job(attempts=3), [not_attempted(1, "4.4.0", "route uplink is held")],
                    BACKOFF, now=10 * 86400, already_warned=True)
    [update] = result.updates
    assert update.next_try == 10 * 86400  # no backoff, and no expiry without an attempt
    assert update.outcome.verdict is Verdict.DEFERRED and not update.outcome.attempted


def test_dsn_of_a_hostile_original_is_well_formed():
    # Found by fuzzing (bench/fuzz.py, target dsn): a locally submitted
    # original may hold bare CRs, NULs, endless lines or no blank line at
    # all; the DSN carried them, and an SMTP server refuses such a message.
    original = b"Subject: a\rb\0c " + "é".encode() * 2000 + b"\r\n" + b"y" * (10 * 2**20)
    j = job()
    result = settle(j, [bounced(3, "5.1.1", "no such user\r\n250 ok")], BACKOFF, 50, False)
    add_dsns(result, j, original, "site.test", 50)
    body = result.dsns[0].body
    assert body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r")
    assert b"\0" not in body and len(body) < 80 * 1024
    assert max(len(line) for line in body.split(b"\r\n")) <= 998
    assert "é".encode() * 400 in body  # cut at a character boundary, not dropped


# -- RFC 3461: what each recipient asked for ------------------------------------------

def asking(notify="", orcpt="", ret="", envid="", arrival=0.0) -> DeliveryJob:
    """A job of three recipients; u1 carries the NOTIFY and ORCPT given."""
    j = job(arrival=arrival)
    info = dataclasses.replace(j.message, ret=ret, envid=envid)
    first = dataclasses.replace(j.recipients[0], dsn=RecipientDsn(notify, orcpt))
    return DeliveryJob(info, [first, *j.recipients[1:]], j.route, j.nexthop, j.body)


def reports(j: DeliveryJob, outcomes, now=50.0, warned=False):
    result = settle(j, outcomes, BACKOFF, now, warned)
    add_dsns(result, j, ORIGINAL, "site.test", now)
    return result


def status_part(dsn) -> str:
    report = email.message_from_bytes(dsn.body, policy=policy.default)
    return list(report.iter_parts())[1].as_string()


def test_notify_never_means_no_report_at_all():
    j = asking("NEVER")
    assert reports(j, [bounced(1, "5.1.1", "no such user")]).dsns == []
    assert reports(j, [deferred(1, "4.4.1", "down")], now=3600).dsns == []
    assert reports(j, [delivered(1, "ok")]).dsns == []


def test_without_failure_no_bounce_and_without_delay_no_warning():
    j = asking("DELAY")
    assert reports(j, [bounced(1, "5.1.1", "no such user")]).dsns == []
    [warning] = reports(j, [deferred(1, "4.4.1", "down")], now=3600).dsns
    assert b"Action: delayed" in warning.body
    only_failure = asking("FAILURE")
    assert reports(only_failure, [deferred(1, "4.4.1", "down")], now=3600).dsns == []
    assert len(reports(only_failure, [bounced(1, "5.1.1", "no")]).dsns) == 1


def test_a_recipient_without_notify_keeps_its_reports_beside_one_that_asked_for_none():
    j = asking("NEVER")
    result = reports(j, [bounced(1, "5.1.1", "no"), bounced(2, "5.1.1", "no")])
    [dsn] = result.dsns
    assert b"u2@example.test" in dsn.body and b"u1@example.test" not in dsn.body
    assert result.dsn_kinds == ["FAILURE"]


def test_success_reports_say_delivered_or_relayed_and_none_when_passed_on():
    j = asking("SUCCESS", "rfc822;Old+One@example.test")
    [dsn] = reports(j, [delivered(1, "delivered to maildir /m"), delivered(2, "ok")]).dsns
    fields = status_part(dsn)
    assert "Action: delivered" in fields and "Status: 2.0.0" in fields
    assert "Original-Recipient: rfc822;Old+One@example.test" in fields
    assert "u2@example.test" not in fields  # it did not ask
    assert b"Subject: Successful Mail Delivery Report" in dsn.body
    [relayed] = reports(j, [delivered(1, "250 ok", "mx.far.test", "relayed")]).dsns
    assert "Action: relayed" in status_part(relayed)
    assert reports(j, [delivered(1, "250 ok", "mx.far.test", "")]).dsns == []


def test_ret_full_returns_the_whole_message_in_a_failure_report_only():
    j = asking("FAILURE,DELAY", ret="FULL", envid="site-42 x")
    [failure] = reports(j, [bounced(1, "5.1.1", "no")]).dsns
    parts = list(email.message_from_bytes(failure.body, policy=policy.default).iter_parts())
    assert parts[2].get_content_type() == "message/rfc822"
    assert b"\r\n" + b"x" * 998 + b"\r\n" in failure.body  # the body, cut at 998 octets a line
    assert "Original-Envelope-Id: site-42 x" in status_part(failure)
    [warning] = reports(j, [deferred(1, "4.4.1", "down")], now=3600).dsns
    assert b"x" * 100 not in warning.body  # delays return headers only
    hdrs = asking("FAILURE", ret="HDRS")
    [headers_only] = reports(hdrs, [bounced(1, "5.1.1", "no")]).dsns
    assert b"x" * 100 not in headers_only.body and b"text/rfc822-headers" in headers_only.body
