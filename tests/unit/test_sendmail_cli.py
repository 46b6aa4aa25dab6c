"""sendmail flag parsing and the handling of locally typed messages."""

import random
import tracemalloc

import pytest

from tidepost.address import Address
from tidepost.cli.sendmail import UsageError, parse_args
from tidepost.submission.headers import MAX_LINE
from tidepost.submission.local_message import complete_headers, from_local_input, remove_bcc


def test_usual_flags():
    opts = parse_args(["-oi", "-t", "-f", "alice@site.test", "-FAlice Example", "-odb",
                       "-oem", "-v", "bob@example.test"])
    assert (opts.from_headers, opts.dot_ends_input, opts.sender, opts.full_name) == \
        (True, False, "alice@site.test", "Alice Example")
    assert opts.recipients == ["bob@example.test"]


def test_dsn_flags_as_sendmail_and_postfix_take_them():
    opts = parse_args(["-N", "delay,success", "-Rhdrs", "-V", "my id 7", "bob"])
    assert (opts.notify, opts.ret, opts.envid) == ("SUCCESS,DELAY", "HDRS", "my id 7")
    assert parse_args(["-Nnever", "bob"]).notify == "NEVER"
    for bad in (["-N", "never,delay"], ["-N", "sometimes"], ["-R", "body"],
                ["-V", "x" * 101], ["-V", "bad\tid"], ["-N"]):
        with pytest.raises(UsageError):
            parse_args([*bad, "bob"])


def test_modes():
    assert parse_args(["-bp"]).mode == "list"
    assert parse_args(["-q"]).mode == "flush"
    assert parse_args(["-q15m"]).mode == "flush"
    opts = parse_args(["-qR", "example.test"])
    assert (opts.mode, opts.flush_domain) == ("flush", "example.test")
    assert parse_args(["-qRexample.test"]).flush_domain == "example.test"
    assert parse_args(["-bs"]).mode == "smtp"
    assert parse_args(["-bi"]).mode == "aliases"  # newaliases, as in Postfix and Exim
    assert parse_args(["-C", "/etc/t.toml", "x"]).config == "/etc/t.toml"


def test_bad_flags():
    with pytest.raises(UsageError):
        parse_args(["-Z"])
    with pytest.raises(UsageError):
        parse_args(["-f"])
    with pytest.raises(UsageError):
        parse_args(["-bd"])


def test_local_input_is_crlf_and_a_lone_dot_ends_it_unless_i():
    raw = b"Subject: x\n\nline\n.\nafter\n"
    assert from_local_input(raw, dot_ends_input=True) == b"Subject: x\r\n\r\nline\r\n"
    assert from_local_input(raw, dot_ends_input=False) == \
        b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n"


def test_a_leading_mbox_from_line_is_dropped_as_postfix_and_sendmail_do():
    # Else the whole header went into the body: "From x date" is no field,
    # so the message seemed to have none (Subject lost, From/Date added).
    raw = b"From alice Thu Dec  3 17:00:00 2026\n>From old\nSubject: x\n\nFrom here on\n"
    assert from_local_input(raw, dot_ends_input=True) == \
        b"Subject: x\r\n\r\nFrom here on\r\n"


def test_missing_headers_are_added_once():
    body = complete_headers(b"Subject: x\r\n\r\nhi\r\n", Address("root", "site.test"),
                            "Root", "site.test")
    assert body.startswith(b"From: Root <root@site.test>\r\nDate: ")
    assert b"\r\nMessage-ID: <" in body and body.endswith(b"Subject: x\r\n\r\nhi\r\n")
    assert complete_headers(body, Address("root", "site.test"), None, "site.test") == body
    bare = complete_headers(b"just text\r\n", Address("root", "site.test"), None, "site.test")
    assert b"\r\n\r\njust text\r\n" in bare


def test_bcc_is_removed_with_its_continuation():
    body = b"To: a@x.test\r\nBcc: b@x.test,\r\n c@x.test\r\nSubject: s\r\n\r\nBcc: body\r\n"
    assert remove_bcc(body) == b"To: a@x.test\r\nSubject: s\r\n\r\nBcc: body\r\n"


def test_bare_cr_and_nul_in_local_input_cannot_reach_the_queue():
    assert from_local_input(b"a\rb\r\nc\0d\n", dot_ends_input=True) == b"a\r\nb\r\ncd\r\n"


def test_over_long_local_lines_are_broken_so_that_smtp_takes_them():
    # RFC 5321 4.5.3.1.6: at most 998 octets and CRLF; tidepost's own server (the
    # relay) refuses longer with 554 5.6.0, so the message would bounce there.
    # Broken as Postfix's smtp_line_length_limit does, with CRLF SPACE.
    long = b"x" * 2500
    body = from_local_input(b"Subject: " + long + b"\n\n" + long + b"\nshort\n", True)
    lines = body.split(b"\r\n")
    assert max(len(line) for line in lines) == 998
    assert lines[1].startswith(b" ") and lines[3:] != [] and b"".join(
        line.lstrip(b" ") if i else line for i, line in enumerate(lines[:3])) == \
        b"Subject: " + long
    assert body.endswith(b"\r\nshort\r\n") and body.replace(b"\r\n ", b"").count(long) == 2


def _reference_local_input(raw: bytes, dot_ends_input: bool) -> bytes:
    """from_local_input as it was written first, line by line: the behaviour to keep."""
    lines = raw.replace(b"\0", b"").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    while lines and lines[0].lstrip(b">").startswith(b"From "):
        del lines[0]
    out = []
    for line in lines:
        line = line[:-1] if line.endswith(b"\r") else line
        if dot_ends_input and line == b".":
            break
        for part in line.split(b"\r"):
            if len(part) <= MAX_LINE:
                out.append(part)
            else:
                out += [part[:MAX_LINE]] + [b" " + part[i:i + MAX_LINE - 1]
                                            for i in range(MAX_LINE, len(part), MAX_LINE - 1)]
    return b"".join(line + b"\r\n" for line in out)


def test_local_input_matches_the_line_by_line_reference_on_random_input():
    rng = random.Random(5321)
    pieces = [b"a", b"bc", b".", b"\r", b"\n", b"\r\n", b"\0", b"From ", b">", b" ",
              b"x" * 500, b"y" * 997, b"z" * 1200]
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        for dot in (True, False):
            assert from_local_input(raw, dot) == _reference_local_input(raw, dot), (raw, dot)


def test_local_input_of_30_mb_stays_within_a_few_copies():
    raw = b"".join(b"line %d of a long message\n" % i for i in range(1_200_000))  # ~30 MB
    tracemalloc.start()
    try:
        from_local_input(raw, dot_ends_input=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(raw)  # a list of lines alone took 2.5 times the message
