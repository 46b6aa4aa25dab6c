"""RFC 3461 values: xtext both ways, and what each DSN parameter takes."""

import pytest
from hypothesis import given, strategies as st

from tidepost.dsnparams import (DsnParameterError, orcpt_parameter, parse_envid, parse_notify,
                                parse_orcpt, parse_ret, xtext_decode, xtext_encode)

PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@given(PRINTABLE)
def test_xtext_round_trips_every_printable_value(value):
    encoded = xtext_encode(value)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    assert xtext_decode(encoded) == value


def test_xtext_refuses_what_would_break_a_report_header():
    for bad in ("a+0D+0ABcc: x", "a+00", "a+", "a+4", "a+G1", "a=b", "a b", "é"):
        with pytest.raises(DsnParameterError):
            xtext_decode(bad)
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"


def test_notify_is_stored_in_one_order_and_never_stands_alone():
    assert parse_notify("delay,Failure,SUCCESS") == "SUCCESS,FAILURE,DELAY"
    assert parse_notify("never") == "NEVER"
    for bad in (None, "", "NEVER,DELAY", "DELAY,DELAY", "ALWAYS", "SUCCESS,"):
        with pytest.raises(DsnParameterError):
            parse_notify(bad)


def test_orcpt_ret_and_envid():
    assert parse_orcpt("rfc822;a+2Bb@x.test") == "rfc822;a+b@x.test"
    assert orcpt_parameter("rfc822;a+b@x.test") == "rfc822;a+2Bb@x.test"
    assert parse_ret("hdrs") == "HDRS" and parse_envid("x" * 100) == "x" * 100
    for parse, bad in ((parse_orcpt, "rfc822"), (parse_orcpt, "rfc 822;a@b"),
                       (parse_orcpt, "rfc822;" + "a" * 494), (parse_ret, "BODY"),
                       (parse_envid, "x" * 101), (parse_envid, None)):
        with pytest.raises(DsnParameterError):
            parse(bad)
