"""The client's reply parser and DATA encoding, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from tidepost.errors import TempFailure
from tidepost.smtp_client.replies import Reply, read_reply
from tidepost.smtp_client.transaction import dot_stuff


def parse(wire: bytes, timeout: float = 1.0) -> Reply:
    """Feed `wire` to a StreamReader (then EOF) and read one reply."""
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        return await read_reply(reader, timeout)
    return asyncio.run(main())


def test_multi_line_reply_is_one_reply():
    reply = parse(b"250-mx.test hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
    assert reply == Reply(250, ("mx.test hello", "PIPELINING", "SIZE 1000"))


def test_enhanced_status_from_text_when_class_matches():
    assert parse(b"550 5.1.1 <a@b>: no such user\r\n").status == "5.1.1"
    assert parse(b"451 4.7.1 greylisted\r\n").status == "4.7.1"
    assert parse(b"550 2.1.1 inconsistent\r\n").status == "5.0.0"
    assert parse(b"554 no code here\r\n").status == "5.0.0"
    assert parse(b"250\r\n") == Reply(250, ("",))


def test_bare_lf_and_text_joined():
    reply = parse(b"421-4.3.2 going down\n421 try later\n")
    assert (reply.code, reply.text, str(reply)) == (
        421, "4.3.2 going down try later", "421 4.3.2 going down try later")


@pytest.mark.parametrize("wire, status", [
    (b"", "4.4.2"),                          # closed before a reply
    (b"250-partial\r\n", "4.4.2"),           # closed mid-reply
    (b"hello\r\n", "4.5.0"),                 # not a reply at all
    (b"250-a\r\n251 b\r\n", "4.5.0"),        # code changed mid-reply
    (b"250x\r\n", "4.5.0"),
])
def test_unusable_input_raises_temp_failure(wire, status):
    with pytest.raises(TempFailure) as caught:
        parse(wire)
    assert caught.value.status == status


def test_silence_times_out():
    async def main():
        reader = asyncio.StreamReader()
        return await read_reply(reader, 0.05)
    with pytest.raises(TempFailure) as caught:
        asyncio.run(main())
    assert caught.value.reason == "conversation timed out"


def test_dot_stuffing_and_terminator():
    assert dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n.\r\n"
    assert dot_stuff(b"no final newline") == b"no final newline\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"
