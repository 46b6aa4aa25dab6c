"""Property tests of the parsers (hypothesis): a few hundred inputs each.

The oracles are the fuzz targets of tests/fuzz_targets.py, shared with
bench/fuzz.py (which runs a million inputs each); here hypothesis builds
inputs near each parser's grammar, and shrinks any failure to a small one.
"""

from __future__ import annotations

import fuzz_targets as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

QUICK = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

ATOMS = st.sampled_from(["a", "Z", "0", ".", "@", "<", ">", ":", ",", '"', "\\", " ", "%",
                         "!", "[", "]", "IPv6:", "::1", "192.0.2.1", "-", "=", "é", "\0",
                         "\r", "\n", "postmaster", "x" * 70, "SIZE", "BODY", "8BITMIME",
                         "SMTPUTF8", "FROM:", "TO:", "example.test", "@a,@b:"])
NEAR_TEXT = st.lists(ATOMS, max_size=24).map("".join)


def near(strategy=NEAR_TEXT):
    """Text from the grammar's pieces, or any text at all."""
    return st.one_of(strategy, st.text(max_size=80))


@QUICK
@given(near())
def test_mail_and_rcpt_arguments_parse_or_are_refused(text):
    T.command(text.encode("utf-8", "surrogatepass"))


@QUICK
@given(near())
def test_paths_parse_to_addresses_that_round_trip(text):
    T.address(text.encode("utf-8", "surrogatepass"))


@QUICK
@given(st.lists(st.sampled_from([
    b"EHLO c.test\r\n", b"HELO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<alice@relay.test>\r\n", b"RCPT TO:<x@y.test>\r\n", b"DATA\r\n", b"RSET\r\n",
    b"hi\r\n.\r\n", b"ETRN fleet.test\r\n", b"ETRN @fleet.test\r\n", b"ETRN #q\r\n",
    b"ETRN b\xc3\xbccher.test\r\n", b"ATRN\r\n", b"ATRN a.fleet.test\r\n",
    b"AUTH CRAM-MD5\r\n", b"AUTH PLAIN AGEAYg==\r\n", b"*\r\n", b"STARTTLS\r\n",
    b"VRFY x\r\n", b"EXPN x\r\n", b"NOOP\r\n", b"HELP\r\n", b"QUIT\r\n", b"\r\n", b"\n",
    b"\xff\xfe\r\n", b"x" * 3000 + b"\r\n", b"MAIL FROM:<a@b.test> SIZE=99999999\r\n",
    b"BDAT 10\r\n"]) | st.binary(max_size=40), max_size=12).map(b"".join))
def test_any_conversation_gets_only_documented_replies(script):
    T.session(script)


BODY_PIECES = st.sampled_from([b"\r\n", b".", b"..", b"\r", b"\n", b"\0", b"x", b"x" * 999,
                               b"\r\n.\r\n", b"\n.\n", b"\r\n.", b".\r\n"])
SECTIONS = st.lists(BODY_PIECES | st.binary(max_size=8), max_size=30).map(b"".join)


@QUICK
@given(st.integers(0, 255), SECTIONS)
def test_data_ends_only_at_crlf_dot_crlf_and_unstuffs_exactly(mode, section):
    T.data(bytes([mode]) + section)


@QUICK
@given(SECTIONS)
def test_any_body_dot_stuffed_comes_back_unchanged(body):
    T.data(bytes([0x80 | 7]) + body)


KEYS = st.sampled_from(["hostname", "spool", "listen", "max_connections", "idle_timeout",
                        "reserved_connections", "min_data_rate", "max_message_size",
                        "relay_networks", "domains", "name", "schedule", "lifetime",
                        "etrn_rate", "customer_domains", "backend", "transport", "unknown"])
VALUES = st.sampled_from(['"x"', '"*"', "1", "0", "-1", "1.5", "nan", "inf", "-inf", "1e999",
                          '"15m"', '"1e400s"', '"9' + "9" * 400 + 's"', '"10M"', "true", "[]",
                          '["127.0.0.0/8"]', '["a", 1]', '{a = 1}', "[[1]]", '"every 1h"',
                          '"Mon-Fri 08:00-18:00 every 15m"', "2026-01-01", '"' + "a" * 300 + '"'])
LINES = st.one_of(st.sampled_from(["[smtp]", "[local]", "[relay]", "[queue]", "[delivery]",
                                   "[dns]", "[[route]]", "[smtp.x]", "[", "[[", "#"]),
                  st.tuples(KEYS, VALUES).map(" = ".join), st.text(max_size=20))


@QUICK
@given(st.lists(LINES, max_size=16).map("\n".join))
def test_config_text_gives_a_config_in_bounds_or_a_config_error(text):
    T.config(text.encode("utf-8", "surrogatepass"))


@QUICK
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(["alice", "bob", "Postmaster", "a+b", "", " x", "#c", "loop"]),
              st.lists(st.sampled_from(["alice", "bob@far.test", "loop", "|cmd", "/f", "",
                                        "x@", "@y", "a b", "mailer-daemon", "\0", "é"]),
                       max_size=4).map(", ".join)).map(": ".join),
    st.sampled_from(["  continued", "\tbob", "no colon"]), st.text(max_size=20)),
    max_size=10).map("\n".join))
def test_aliases_parse_and_every_name_expands(text):
    T.aliases(text.encode("utf-8", "surrogatepass"))


HEADER_PIECES = st.sampled_from([b"Subject: hi\r\n", b"From: a@b\r\n", b"\r\n", b"\n", b"\r",
                                 b"\0", b"x" * 2000, b"\xff\xfe", b"--", b"boundary=",
                                 b"Content-Type: multipart/mixed\r\n", b"\r\n\r\nbody"])


@QUICK
@given(st.lists(HEADER_PIECES | st.binary(max_size=16), max_size=20).map(b"".join))
def test_any_original_gives_a_well_formed_dsn(original):
    T.dsn(original)
    T.assert_parsed_dsn(T.dsn_body(original))
