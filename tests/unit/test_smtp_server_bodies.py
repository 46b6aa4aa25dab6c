"""Large DATA sections wait for a slot: memory stays bounded however many send at once.

A real SmtpServer on 127.0.0.1 with one slot above 64 KiB: while one client's
large message is held (its submission waits), a second client's large DATA
is not read past the threshold (its writes block on TCP), a small message
still goes through, and once the first is committed the second completes
intact.
"""

from __future__ import annotations

import asyncio

from test_smtp_server import FakeSubmission, make_config

from tidepost.smtp_server.bodies import LargeBodies
from tidepost.smtp_server.listeners import SmtpServer
from tidepost.smtp_server.replies import Reply

THRESHOLD = 64 * 1024
LINE = b"0123456789" * 7 + b"abcdef\r\n"  # 78 octets


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One reply (last line of a multi-line one)."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if line[3:4] == b" ":
            return Reply.parse(line[:-2].decode())


async def open_transaction(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, EHLO, MAIL, RCPT, DATA: ready for the message text."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_reply(reader)
    for command, code in ((b"EHLO c.test", 250), (b"MAIL FROM:<s@origin.test>", 250),
                          (b"RCPT TO:<alice@local.example>", 250), (b"DATA", 354)):
        writer.write(command + b"\r\n")
        assert (await read_reply(reader)).code == code
    return reader, writer


def test_second_large_body_waits_for_the_slot():
    submission = FakeSubmission()
    submission.gate = asyncio.Event()
    large = LargeBodies(1, THRESHOLD)
    big = LINE * (16 * 1024 * 1024 // len(LINE))  # more than the kernel buffers between us

    async def main() -> None:
        server = SmtpServer(make_config(), submission, large_bodies=large)
        await server.start()
        port = server.addresses()[0][1]
        try:
            first = await open_transaction(port)
            first[1].write(LINE * 2000 + b".\r\n")  # 156 KB: takes the slot, then waits
            await first[1].drain()
            while not (large.held and submission.gate is not None):
                await asyncio.sleep(0.01)
            second = await open_transaction(port)
            second[1].write(big + b".\r\n")
            try:
                await asyncio.wait_for(second[1].drain(), 1.0)
                raise AssertionError("the second large body was read while the slot was held")
            except TimeoutError:
                pass
            assert large.waits == 1 and large.held == 1
            small = await open_transaction(port)
            small[1].write(LINE * 10 + b".\r\n")  # under the threshold: never waits
            await asyncio.sleep(0.2)
            submission.gate.set()
            assert (await read_reply(small[0])).code == 250
            assert (await read_reply(first[0])).code == 250
            await asyncio.wait_for(second[1].drain(), 10)
            assert (await read_reply(second[0])).code == 250
            assert large.peak == 1 and large.held == 0
            for _, writer in (first, second, small):
                writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    bodies = sorted(len(body) for _, body, _ in submission.submitted)
    assert bodies == [len(LINE) * 10, len(LINE) * 2000, len(big)]


def test_slots_follow_the_message_size_limit():
    from tidepost.smtp_server.bodies import BODY_MEMORY, for_config
    assert for_config(make_config().smtp).slots == BODY_MEMORY // (25 * 1024 * 1024)
    assert for_config(make_config(max_message_size=2**31).smtp).slots == 1
