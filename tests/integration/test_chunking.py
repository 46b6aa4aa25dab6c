"""CHUNKING (BDAT, RFC 3030) against real `tidepost serve` daemons.

- A client (Python's smtplib, BDAT written raw: swaks has no BDAT) sends a
  message in pipelined chunks to a site; the site relays it to a relay
  tidepost, whose Maildir gets it byte for byte after the Received lines.
  (XTIDEPOST BATCH off, else the nodes would use that.)
  Between the two a recording TCP proxy keeps what the site's client sent:
  with the relay offering CHUNKING the site uses BDAT, with `smtp.chunking =
  false` DATA, dot-stuffed (the leading dots of the message doubled).
- The refusals keep the session in step: BDAT with no transaction (503, its
  octets read, not run), a bare LF (554 5.6.0), a message over the size
  limit (552 5.3.4), all followed by a message that is queued.
- A connection dropped in the middle of a BDAT chunk queues nothing.
"""

from __future__ import annotations

import re
import smtplib
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.integration

MESSAGE = ("From: carol@site.test\r\nTo: alice@relay.test\r\nSubject: chunked\r\n"
           "Message-ID: <chunked@site.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "\r\n.leading dot\r\n.\r\n..two dots\r\nQUIT\r\n\r\nüñí 8-bit\r\n"
           + "x" * 998 + "\r\nlast line\r\n").encode()
TRACE = re.compile(rb"(?:(?:Received|Return-Path|Delivered-To|X-Original-To):"
                   rb"[^\r\n]*\n(?:[ \t][^\r\n]*\n)*)*\Z")  # a Maildir file: LF lines


class RecordingProxy:
    """A TCP relay to 127.0.0.1:`port` that keeps the octets its clients sent."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for source, sink, record in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, record),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def chunked_client(port: int) -> smtplib.SMTP:
    """An smtplib client after EHLO, checked to have been offered CHUNKING."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
    client.ehlo()
    assert client.has_extn("chunking") and client.has_extn("pipelining")
    return client


def bdat(octets: bytes, last: bool = False) -> bytes:
    """A BDAT command with its chunk."""
    return b"BDAT %d%s\r\n" % (len(octets), b" LAST" if last else b"") + octets


def replies(client: smtplib.SMTP, count: int) -> list[int]:
    """The codes of the next `count` replies."""
    return [client.getreply()[0] for _ in range(count)]


def envelope(recipient: str, body: str = "") -> bytes:
    """MAIL and RCPT lines, pipelined."""
    return f"MAIL FROM:<carol@site.test>{body}\r\nRCPT TO:<{recipient}>\r\n".encode()


def send_in_chunks(port: int, recipient: str, message: bytes) -> None:
    """Send `message` in three pipelined chunks, the last with LAST; expect it queued."""
    client = chunked_client(port)
    third = len(message) // 3
    client.send(envelope(recipient, " BODY=8BITMIME") + bdat(message[:third])
                + bdat(message[third:2 * third]) + bdat(message[2 * third:], last=True))
    assert replies(client, 5) == [250, 250, 250, 250, 250]
    client.quit()


@pytest.mark.parametrize("chunking", [True, False], ids=["relay-bdat", "relay-data"])
def test_bdat_message_relayed_site_to_relay_arrives_byte_for_byte(tidepost_node, chunking):
    # batch off: between tidepost nodes XTIDEPOST BATCH would carry it instead
    relay = tidepost_node(hostname="relay.test", smtp={"chunking": chunking, "batch": False},
                          local={"domains": ["relay.test"], "users": ["alice"],
                                 "system_users": False})
    proxy = RecordingProxy(relay.port)
    try:
        site = tidepost_node(route=[{"name": "uplink", "domains": ["*"],
                                     "transport": "smarthost",
                                     "smarthost": f"[127.0.0.1]:{proxy.port}"}])
        send_in_chunks(site.port, "alice@relay.test", MESSAGE)
        site.wait_queue_empty()
        relay.wait_for(lambda: len(relay.maildir("alice")) == 1, what="the relayed message")
    finally:
        proxy.close()
    delivered = relay.maildir("alice")[0]
    message = MESSAGE.replace(b"\r\n", b"\n")  # the Maildir holds Unix text
    assert delivered.endswith(message) and TRACE.match(delivered[:-len(message)])
    assert delivered.count(b"Received: ") == 2  # the site's and the relay's
    wire = bytes(proxy.sent)
    if chunking:
        assert re.search(rb"\r\nBDAT \d+ LAST\r\nReceived: ", wire)  # the site's own line
        assert b"\r\nDATA\r\n" not in wire
        assert wire.endswith(MESSAGE + b"QUIT\r\n")  # as stored: no dot-stuffing
    else:
        assert b"BDAT" not in wire
        assert b"\r\n..leading dot\r\n..\r\n...two dots\r\n" in wire  # dot-stuffed
        assert wire.endswith(b"last line\r\n.\r\nQUIT\r\n")


def test_bdat_refusals_keep_the_session_in_step(tidepost_node):
    node = tidepost_node(smtp={"max_message_size": 4096})
    client = chunked_client(node.port)
    trap = b"RSET\r\nQUIT\r\n"
    client.send(bdat(trap) + b"NOOP\r\n")
    assert replies(client, 2) == [503, 250]
    client.send(envelope("alice@site.test") + bdat(b"a bare\nLF\r\n", last=True))
    assert replies(client, 3) == [250, 250, 554]
    client.send(envelope("alice@site.test") + bdat(b"x" * 3000 + b"\r\n")
                + bdat(b"y" * 3000 + b"\r\n") + bdat(trap, last=True) + b"NOOP\r\n")
    assert replies(client, 6) == [250, 250, 250, 552, 503, 250]
    client.send(envelope("alice@site.test") + bdat(b"Subject: ok\r\n\r\nfine\r\n", last=True))
    assert replies(client, 3) == [250, 250, 250]
    client.quit()
    node.wait_for(lambda: len(node.maildir("alice")) == 1, what="the one good message")
    assert node.maildir("alice")[0].endswith(b"Subject: ok\n\nfine\n")
    assert "5.6.0" in node.log_tail(200) and "5.3.4" in node.log_tail(200)


def test_connection_dropped_mid_bdat_queues_nothing(tidepost_node):
    node = tidepost_node()
    client = chunked_client(node.port)
    client.send(envelope("alice@site.test") + bdat(b"Subject: first\r\n\r\n")
                + b"BDAT 100000 LAST\r\n" + b"z" * 50000)
    assert replies(client, 3) == [250, 250, 250]
    client.sock.close()
    time.sleep(1.0)  # what the daemon would have queued, it would have by now
    assert node.queue_empty() and node.maildir("alice") == []
    send_in_chunks(node.port, "alice@site.test", MESSAGE)  # and it still takes mail
    node.wait_for(lambda: len(node.maildir("alice")) == 1, what="the message after")
