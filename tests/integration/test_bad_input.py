"""Bad input against a real daemon: each attack gets its documented reply, and
what is already queued is unchanged (SPEC §4).

The uplink is held, so a message queued first for a remote recipient stays
in the queue while the attacks run; at the end the queue must list exactly
that message, and the Maildirs must hold only the legitimate local mail.
"""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.integration

HELD = {"route": [{"name": "uplink", "domains": ["*"], "start_held": True}],
        "smtp": {"max_message_size": "64k", "max_recipients": 5, "max_errors": 50}}
SMUGGLED = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@site.test>\r\nDATA\r\n" \
           b"Subject: smuggled\r\n\r\nsmuggled\r\n"
END_VARIANTS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"]


class Client:
    """A raw SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        assert self.reply().startswith(b"220 ")
        self.send(b"EHLO attacker.test\r\n")
        assert self.reply().startswith(b"250 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """The next complete (possibly multi-line) reply; its last line."""
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; had {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line

    def transaction(self, rcpt: bytes = b"bob@site.test") -> None:
        self.send(b"MAIL FROM:<alice@site.test>\r\n")
        assert self.reply().startswith(b"250")
        self.send(b"RCPT TO:<" + rcpt + b">\r\n")
        assert self.reply().startswith(b"250")
        self.send(b"DATA\r\n")
        assert self.reply().startswith(b"354")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def held_node(tidepost_node):
    node = tidepost_node(**HELD)
    node.send("alice@site.test", "carol@remote.test", "Subject: keep me\r\n\r\nkeep\r\n")
    before = node.queue()
    assert "carol@remote.test" in before
    yield node
    after = node.queue()
    assert [line.split()[0] for line in after.splitlines() if "@" in line] == \
        [line.split()[0] for line in before.splitlines() if "@" in line]  # same queue ids
    assert node.running, node.log_tail()


@pytest.mark.parametrize("ending", END_VARIANTS, ids=[repr(e) for e in END_VARIANTS])
def test_smuggling_end_of_data_variants_queue_nothing(held_node, ending):
    client = Client(held_node.port)
    client.transaction()
    client.send(b"Subject: outer\r\n\r\nouter" + ending + SMUGGLED + b"\r\n.\r\n")
    assert client.reply().startswith(b"554 5.6.0")
    client.send(b"NOOP\r\n")
    assert client.reply().startswith(b"250")
    client.close()
    held_node.wait_for(lambda: True, timeout=1)
    assert not any(b"smuggled" in m or b"outer" in m for m in held_node.maildir("bob"))


def test_nul_bytes_and_long_lines_are_refused(held_node):
    client = Client(held_node.port)
    client.transaction()
    client.send(b"Subject: nul\r\n\r\nbad\x00byte\r\n.\r\n")
    assert client.reply().startswith(b"554 5.6.0")
    client.transaction()
    client.send(b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n.\r\n")
    assert client.reply().startswith(b"554 5.6.0")
    client.send(b"NOOP " + b"y" * 5000 + b"\r\n")
    assert client.reply().startswith(b"500 5.5.2")
    client.send(b"NOOP\n")
    assert client.reply().startswith(b"500 5.5.2")
    client.close()


def test_oversize_and_too_many_recipients(held_node):
    client = Client(held_node.port)
    client.send(b"MAIL FROM:<alice@site.test> SIZE=1000000\r\n")
    assert client.reply().startswith(b"552 5.3.4")
    client.transaction()
    client.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 100 + b".\r\n")
    assert client.reply().startswith(b"552 5.3.4")
    client.send(b"MAIL FROM:<alice@site.test>\r\n")
    assert client.reply().startswith(b"250")
    replies = []
    for n in range(6):
        client.send(f"RCPT TO:<bob+{n}@site.test>\r\n".encode())
        replies.append(client.reply()[:9])
    assert replies == [b"250 2.1.5"] * 5 + [b"452 4.5.3"]
    client.send(b"RSET\r\nQUIT\r\n")
    client.close()


def test_an_oversize_message_from_sendmail_is_refused_for_good_not_deferred(held_node):
    # The daemon refuses it from the header, before reading it all: the
    # client must still read that answer (exit 65), not report a broken
    # pipe as a temporary failure (75) that makes its caller retry forever.
    big = "Subject: big\n\n" + ("z" * 76 + "\n") * 40000  # 3 MB, limit 64k
    done = held_node.sendmail(["bob"], big, check=False)
    assert done.returncode == 65, done.stderr
    assert b"max_message_size" in done.stderr


def test_garbage_and_unknown_commands(held_node):
    client = Client(held_node.port)
    client.send(b"FROBNICATE\r\n")
    assert client.reply().startswith(b"500 5.5.1")
    client.send(b"\xff\xfe\x00garbage\r\n")
    assert client.reply().startswith(b"500")
    client.send(b"RCPT TO:<bob@site.test>\r\n")
    assert client.reply().startswith(b"503")
    client.send(b"MAIL FROM:<not an address>\r\n")
    assert client.reply().startswith(b"501")
    client.close()


def test_legitimate_mail_still_flows_after_the_attacks(held_node):
    client = Client(held_node.port)
    client.transaction()
    client.send(b"Subject: fine\r\n\r\nbare\nLF\r\n.\r\n")
    assert client.reply().startswith(b"554 5.6.0")
    client.transaction()
    client.send(b"Subject: fine\r\n\r\nfine\r\n..dot-stuffed\r\n.\r\n")
    assert client.reply().startswith(b"250 2.0.0")
    client.close()
    messages = held_node.wait_for(lambda: held_node.maildir("bob"), timeout=10,
                                  what="bob's mail")
    assert len(messages) == 1 and b"\n.dot-stuffed\n" in messages[0]  # unstuffed, LF in a Maildir
