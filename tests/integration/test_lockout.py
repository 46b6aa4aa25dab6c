"""No lock-out: a flood of trickling connections from two untrusted addresses
cannot keep the site's own LAN from sending mail (issue 8).

A real `tidepost serve` with `max_connections = 10`, 3 of them reserved;
2 x max_connections connections from 127.0.0.2 and 127.0.0.3 each send a
byte every 0.3 s (never a whole line, and half of them never read what the
server says).  A client from `relay_networks` (127.0.0.1 only) must then
get its 220 and have a message accepted (250 after the commit) within 2 s.
Before the reserve, it got 421 at once: the tricklers held every slot.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.integration

MAX_CONNECTIONS = 10
RESERVED = 3
FLOODERS = ("127.0.0.2", "127.0.0.3")


async def trickler(port: int, source: str, reads: bool, stop: asyncio.Event) -> bytes:
    """Connect from `source`, then send one octet every 0.3 s; the first reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if not reads:
        writer.transport.pause_reading()
    first = b""
    try:
        if reads:
            first = await asyncio.wait_for(reader.readline(), 5)
        while not stop.is_set():
            writer.write(b"N")
            await writer.drain()
            await asyncio.sleep(0.3)
    except (ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        writer.transport.abort()
    return first


async def lan_client(port: int) -> tuple[float, float, bytes]:
    """From 127.0.0.1: seconds to the 220, seconds to the 250 after DATA, that reply."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.0.0.1", 0))

    async def command(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        return await reply()

    async def reply() -> bytes:
        while (line := await asyncio.wait_for(reader.readline(), 10))[3:4] == b"-":
            pass
        return line

    greeting = await reply()
    greeted = time.monotonic() - start
    assert greeting.startswith(b"220 "), greeting
    assert (await command(b"EHLO lan.test")).startswith(b"250 ")
    assert (await command(b"MAIL FROM:<bob@site.test>")).startswith(b"250 ")
    assert (await command(b"RCPT TO:<alice@site.test>")).startswith(b"250 ")
    assert (await command(b"DATA")).startswith(b"354 ")
    done = await command(b"Subject: through the flood\r\n\r\nhello\r\n.")
    accepted = time.monotonic() - start
    writer.write(b"QUIT\r\n")
    writer.close()
    return greeted, accepted, done


async def flood_then_send(port: int) -> tuple[list[bytes], tuple[float, float, bytes]]:
    """Open the flood, let it trickle, then time the LAN client; end the flood."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trickler(port, FLOODERS[i % 2], reads=i % 4 < 2, stop=stop))
             for i in range(2 * MAX_CONNECTIONS)]
    await asyncio.sleep(1.5)  # every trickler connected and has sent a few octets
    try:
        lan = await lan_client(port)
    finally:
        stop.set()
    firsts = await asyncio.gather(*tasks)
    return firsts, lan


def test_relay_network_client_is_served_under_a_trickle_flood(tidepost_node):
    node = tidepost_node(smtp={"max_connections": MAX_CONNECTIONS,
                               "reserved_connections": RESERVED,
                               "relay_networks": ["127.0.0.1/32"]})
    firsts, (greeted, accepted, done) = asyncio.run(flood_then_send(node.port))
    print(f"LAN client under the flood: 220 after {greeted * 1000:.0f} ms, "
          f"250 after {accepted * 1000:.0f} ms")
    assert done.startswith(b"250 2.0.0 Ok: queued as ")
    assert accepted < 2.0
    answered = [f for f in firsts if f]  # the tricklers that read their first line
    assert sum(f.startswith(b"220 ") for f in answered) <= MAX_CONNECTIONS - RESERVED
    assert any(f.startswith(b"421 4.7.0") for f in answered)
    node.wait_for(lambda: node.maildir("alice"), what="the LAN message in alice's Maildir")
