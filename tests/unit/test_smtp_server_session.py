"""Conversation on arbitrary streams (as for `sendmail -bs`), no sockets."""

from __future__ import annotations

import asyncio
import dataclasses

from tidepost.config.schema import Config, LocalConfig
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.session import Conversation


class ListWriter:
    """A writer that keeps what it is given."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        """Keep the bytes."""
        self.data += data

    async def drain(self) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """Remember that the conversation hung up."""
        self.closed = True


class Recorder:
    """A submission accepting everything, with no routes but local ones."""
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake

    def __init__(self):
        self.submitted = []

    def is_local_domain(self, domain: str) -> bool:
        """Only local.example is local."""
        return domain in ("", "local.example")

    def local_user_exists(self, local_part: str) -> bool:
        """Everybody exists."""
        return True

    def has_route(self, domain: str) -> bool:
        """Every domain has a route."""
        return True

    async def submit(self, envelope, body, client) -> str:
        """Record the message."""
        self.submitted.append((envelope, body, client))
        return "Q1"


def converse(script: bytes, **options) -> tuple[list[Reply], Recorder, ListWriter]:
    """Feed `script` as the whole input; return the replies given."""
    config = dataclasses.replace(Config(), hostname="site.test",
                                 local=LocalConfig(domains=("local.example",)))
    recorder, writer = Recorder(), ListWriter()

    async def main() -> None:
        stream = asyncio.StreamReader()
        stream.feed_data(script)
        stream.feed_eof()
        await Conversation(config, recorder, stream, writer, **options).run()
    asyncio.run(main())
    lines = bytes(writer.data).decode().split("\r\n")[:-1]
    return [Reply.parse(line) for line in lines if line[3] == " "], recorder, writer


def test_trusted_local_session_may_relay():
    replies, recorder, writer = converse(
        b"HELO me\r\nMAIL FROM:<me@local.example>\r\nRCPT TO:<far@away.example>\r\n"
        b"DATA\r\n", trusted=True)
    assert replies[-1] == S.S354_START_DATA  # EOF inside DATA: nothing queued
    assert recorder.submitted == [] and writer.closed


def test_untrusted_script_on_streams():
    replies, recorder, writer = converse(
        b"HELO me\r\nMAIL FROM:<me@local.example>\r\nRCPT TO:<far@away.example>\r\n"
        b"RCPT TO:<u@local.example>\r\n", peer_ip="198.51.100.7")
    assert replies == [S.greeting("site.test"), Reply(250, "", "site.test"),
                       S.S250_SENDER_OK, S.S550_RELAY_DENIED, S.S250_RECIPIENT_OK]
    assert writer.closed


def test_trusted_message_is_submitted_as_local():
    replies, recorder, _ = converse(
        b"EHLO me\r\nMAIL FROM:<me@local.example>\r\nRCPT TO:<far@away.example>\r\n"
        b"DATA\r\nhi\r\n.\r\nQUIT\r\n", trusted=True)
    assert replies[-2:] == [S.queued("Q1"), S.S221_BYE]
    assert recorder.submitted[0][2].protocol == "local"


def test_a_client_flooding_recipients_past_the_limit_is_cut_off():
    # Postfix: smtpd_recipient_overshoot_limit (1000) 452s are free, each
    # one beyond counts as an error; without that a client could send RCPT
    # after RCPT for ever and keep the event loop busy (200,000 in 15 s).
    config = Config()
    past = config.smtp.max_recipients + 1000 + config.smtp.max_errors
    script = b"EHLO me\r\nMAIL FROM:<me@far.example>\r\n" + \
        b"RCPT TO:<u@local.example>\r\n" * (past + 500)
    replies, _, writer = converse(script, peer_ip="198.51.100.7")
    assert replies.count(S.S250_RECIPIENT_OK) == config.smtp.max_recipients
    assert replies.count(S.S452_TOO_MANY_RECIPIENTS) == 1000 + config.smtp.max_errors
    assert replies[-1] == S.S421_TOO_MANY_ERRORS and writer.closed
