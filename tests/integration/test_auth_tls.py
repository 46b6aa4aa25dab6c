"""AUTH over STARTTLS against a real `tidepost serve` in the relay role.

The relay has a credentials file and an openssl-made certificate and listens
twice: on 127.0.0.1 and on the root end of a veth pair whose other end is in
a network namespace this test makes, so a client there comes from an
address that is neither loopback nor in `smtp.relay_networks`, as a roaming
customer on the Internet would.

- swaks in the namespace: EHLO, STARTTLS, EHLO, AUTH PLAIN (and LOGIN),
  and the message is relayed to remote.test's MX (a smtp-sink) once each;
- in clear from the namespace, PLAIN and LOGIN are not offered and AUTH
  PLAIN gets 538 5.7.11 (RFC 4954 4: no plaintext password mechanism
  without TLS), and relaying is refused;
- BDAT (CHUNKING) inside TLS with AUTH is relayed; a BDAT message begun in
  clear is forgotten by STARTTLS;
- RFC 3207 4.2: what was said before STARTTLS is forgotten (HELO name,
  transaction, AUTH identity), and commands pipelined behind STARTTLS in
  the same packet (CVE-2011-0411) are never executed inside TLS.

Skips unless root with `ip netns` and veth (the daemon, swaks, unbound and
smtp-sink are the real ones ./run-tests installs).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = "tide-secret"
ZONE = ["remote.test. 300 MX 10 mx.remote.test.", "mx.remote.test. 300 A 127.0.0.2"]
SWAKS = "/usr/bin/swaks"
TLS = "<TLS>"  # a dialogue step: the TLS handshake (after the 220 to STARTTLS)


# -- the client: runs in this process (loopback) or in the namespace (as a script) --


def read_reply(sock_file) -> str:
    """One complete (possibly multi-line) SMTP reply, lines joined by \\n."""
    lines = []
    while True:
        line = sock_file.readline()
        if not line:
            raise ConnectionError(f"connection closed after {lines!r}")
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return "\n".join(lines)


def dialogue(host: str, port: int, cafile: str, steps: list[list]) -> list[str]:
    """Greeting, then each [data, n]: send data in one write, read n replies.

    A step [TLS, 0] does the TLS handshake (certificate checked against
    `cafile`, name relay.test) on the same connection.
    """
    raw = socket.create_connection((host, port), timeout=20)
    sock = raw
    sock_file = sock.makefile("rb")
    replies = [read_reply(sock_file)]
    for data, count in steps:
        if data == TLS:
            context = ssl.create_default_context(cafile=cafile)
            sock = context.wrap_socket(raw, server_hostname="relay.test")
            sock_file = sock.makefile("rb")
            continue
        sock.sendall(data.encode())
        replies += [read_reply(sock_file) for _ in range(count)]
    sock.close()
    return replies


if __name__ == "__main__":  # run by the test inside the namespace
    print(json.dumps(dialogue(sys.argv[1], int(sys.argv[2]), sys.argv[3],
                              json.loads(sys.argv[4]))))
    sys.exit(0)


pytestmark = pytest.mark.integration


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def outside():
    """(namespace, client address, relay's address): a veth pair to a new namespace."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and `ip` for a network namespace")
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    namespace, host_end, far_end = f"tpauth-{tag}", f"tpa{tag}", f"tpb{tag}"
    net = random.randrange(1, 255)  # 198.18.0.0/15: benchmarking addresses, never routed
    relay_ip, client_ip = f"198.18.{net}.1", f"198.18.{net}.2"
    if subprocess.run(["ip", "netns", "add", namespace], capture_output=True).returncode:
        pytest.skip("`ip netns add` is not permitted here")
    try:
        try:
            ip("link", "add", host_end, "type", "veth", "peer", "name", far_end,
               "netns", namespace)
        except subprocess.CalledProcessError:
            pytest.skip("no veth devices here")
        ip("addr", "add", f"{relay_ip}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", namespace, "addr", "add", f"{client_ip}/30", "dev", far_end)
        ip("-n", namespace, "link", "set", far_end, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        yield namespace, client_ip, relay_ip
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed relay.test certificate and its key, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=relay.test",
                    "-addext", "subjectAltName=DNS:relay.test", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def relay(outside, tidepost_node, unbound, smtp_sink, sink_port, tmp_path):
    """The relay (TLS, credentials for `ship`), listening on loopback and the veth end."""
    _, _, relay_ip = outside
    cert, key = certificate(tmp_path)
    line = subprocess.run([sys.executable, "-m", "tidepost.cli.main", "passwd", "ship",
                           "site.test"], input=PASSWORD.encode(), capture_output=True,
                          check=True).stdout.decode()
    (tmp_path / "credentials").write_text(line)
    sink = smtp_sink("127.0.0.2", sink_port)
    node = tidepost_node(start=False, dns=unbound(ZONE), smtp_port=sink_port,
                         hostname="relay.test",
                         local={"domains": ["relay.test"], "users": ["postmaster"],
                                "system_users": False},
                         relay={"customer_domains": ["site.test"],
                                "credentials_file": str(tmp_path / "credentials")})
    node.config["smtp"].update(listen=[f"127.0.0.1:{node.port}", f"{relay_ip}:{node.port}"],
                               tls_certificate=str(cert), tls_key=str(key))
    node.config_path.write_text(sys.modules[type(node).__module__].to_toml(node.config))
    node.start()
    node.cert, node.sink, node.relay_ip = cert, sink, relay_ip
    return node


def from_outside(namespace: str, relay, steps: list[list]) -> list[str]:
    """The replies of a dialogue run by a client in the namespace."""
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, __file__,
                           relay.relay_ip, str(relay.port), str(relay.cert),
                           json.dumps(steps)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def swaks(namespace: str, relay, *args: str) -> subprocess.CompletedProcess:
    """swaks in the namespace, to the relay's outside address."""
    return subprocess.run(["ip", "netns", "exec", namespace, SWAKS, "--server",
                           f"{relay.relay_ip}:{relay.port}", "--helo", "roaming.test",
                           "--from", "ship@site.test", *args], capture_output=True, timeout=60)


def message_text(tag: str) -> str:
    return (f"From: ship@site.test\r\nTo: bob@remote.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@site.test>\r\n\r\nrelayed {tag}\r\n")


def test_auth_plain_and_login_over_starttls_relay_from_outside(outside, relay):
    namespace, client_ip, _ = outside
    for mechanism in ("PLAIN", "LOGIN"):
        done = swaks(namespace, relay, "--to", "bob@remote.test", "-tls", "--auth",
                     mechanism, "--auth-user", "ship", "--auth-password", PASSWORD,
                     "--data", message_text(f"via-{mechanism}"))
        transcript = done.stdout.decode(errors="replace")
        assert done.returncode == 0, transcript + done.stderr.decode()
        before, _, after = transcript.partition("Ready to start TLS")
        assert "250-STARTTLS" in before and "250-AUTH" not in before  # no AUTH in clear
        assert "250 AUTH" not in before
        assert "250-AUTH PLAIN LOGIN" in after or "250 AUTH PLAIN LOGIN" in after
        assert "235 2.7.0 Authentication successful" in after
    relay.wait_for(lambda: len(relay.sink.messages()) == 2, what="both relayed messages")
    relay.wait_queue_empty()
    subjects = sorted(m.body.split(b"Subject: ")[1].split(b"\n")[0].rstrip(b"\r")
                      for m in relay.sink.messages())
    assert subjects == [b"via-LOGIN", b"via-PLAIN"]  # each exactly once
    for received in relay.sink.messages():
        assert f"[{client_ip}]".encode() in received.body
        assert b"with ESMTPSA" in received.body  # TLS and AUTH, RFC 3848


def test_no_password_in_clear_from_outside(outside, relay):
    namespace, _, _ = outside
    replies = from_outside(namespace, relay, [
        ["EHLO roaming.test\r\n", 1],
        [f"AUTH PLAIN {plain('ship', PASSWORD)}\r\n", 1],
        ["AUTH LOGIN\r\n", 1],
        ["AUTH CRAM-MD5\r\n", 1],  # nobody has a CRAM-MD5 secret: not offered at all
        ["MAIL FROM:<ship@site.test>\r\n", 1],
        ["RCPT TO:<bob@remote.test>\r\n", 1],
        ["QUIT\r\n", 1]])
    ehlo = replies[1]
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo
    assert replies[2] == replies[3] == \
        "538 5.7.11 Encryption required for requested authentication mechanism"
    assert replies[4].startswith("504 5.5.4")
    assert replies[6].startswith("550 5.7.1")  # not authenticated: no relaying
    # swaks refuses to send the password when AUTH is not offered
    done = swaks(namespace, relay, "--to", "bob@remote.test", "--auth", "PLAIN",
                 "--auth-user", "ship", "--auth-password", PASSWORD)
    assert done.returncode != 0 and PASSWORD.encode() not in done.stdout
    assert plain("ship", PASSWORD).encode() not in done.stdout
    assert relay.queue_empty() and relay.sink.messages() == []


def test_commands_pipelined_behind_starttls_never_run_inside_tls(outside, relay):
    namespace, _, _ = outside
    replies = from_outside(namespace, relay, [
        ["EHLO roaming.test\r\n", 1],
        ["STARTTLS\r\nRSET\r\nEHLO injected.test\r\nMAIL FROM:<evil@evil.test>\r\n", 1],
        [TLS, 0],
        ["RCPT TO:<bob@site.test>\r\n", 1],   # 503: no HELO (and no MAIL) inside TLS
        ["EHLO roaming.test\r\n", 1],
        ["RCPT TO:<bob@site.test>\r\n", 1],   # 503: the injected MAIL never ran
        ["NOOP\r\n", 1],
        ["QUIT\r\n", 1]])
    assert replies[2].startswith("220 2.0.0")
    assert replies[3].startswith("503 5.5.1")  # and not the 250 of the injected RSET
    assert replies[4].startswith("250-relay.test") and "AUTH PLAIN LOGIN" in replies[4]
    assert "STARTTLS" not in replies[4]
    assert replies[5].startswith("503 5.5.1")
    assert replies[6].startswith("250") and replies[7].startswith("221")


def test_starttls_forgets_what_came_before(relay):
    """From loopback, AUTH PLAIN in clear is allowed; STARTTLS then forgets it."""
    replies = dialogue("127.0.0.1", relay.port, str(relay.cert), [
        ["EHLO before.test\r\n", 1],
        [f"AUTH PLAIN {plain('ship', PASSWORD)}\r\n", 1],
        ["MAIL FROM:<ship@site.test>\r\n", 1],
        ["RSET\r\n", 1],
        ["STARTTLS\r\n", 1],
        [TLS, 0],
        ["MAIL FROM:<ship@site.test>\r\n", 1],  # the HELO name is gone
        ["EHLO after.test\r\n", 1],
        [f"AUTH PLAIN {plain('ship', PASSWORD)}\r\n", 1],  # so is the AUTH identity
        ["QUIT\r\n", 1]])
    assert replies[2] == "235 2.7.0 Authentication successful"
    assert replies[5].startswith("220")
    assert replies[6].startswith("503 5.5.1")
    assert "AUTH PLAIN LOGIN" in replies[7]          # offered again inside TLS
    assert replies[8] == "235 2.7.0 Authentication successful"  # not 503 already


def test_bdat_after_starttls_and_auth_and_a_chunk_sent_in_clear_forgotten(outside, relay):
    """CHUNKING inside TLS with AUTH; a BDAT message begun in clear is not carried over."""
    namespace, client_ip, _ = outside
    text = message_text("via-BDAT")
    half = len(text) // 2
    replies = from_outside(namespace, relay, [
        ["EHLO roaming.test\r\n", 1],
        ["MAIL FROM:<ship@site.test>\r\nRCPT TO:<postmaster@relay.test>\r\n"
         "BDAT 16\r\nSubject: clear\r\n", 3],
        ["STARTTLS\r\n", 1],
        [TLS, 0],
        ["EHLO roaming.test\r\n", 1],
        ["BDAT 6 LAST\r\nQUIT\r\n", 1],  # the clear transaction is gone: 503, octets read
        [f"AUTH PLAIN {plain('ship', PASSWORD)}\r\n", 1],
        ["MAIL FROM:<ship@site.test>\r\nRCPT TO:<bob@remote.test>\r\n"
         f"BDAT {half}\r\n{text[:half]}BDAT {len(text) - half} LAST\r\n{text[half:]}", 4],
        ["QUIT\r\n", 1]])
    assert replies[1].startswith("250-relay.test") and "CHUNKING" in replies[1]
    assert replies[4].startswith("250 2.0.0 Ok: 16 octets")
    assert "CHUNKING" in replies[6] and replies[7].startswith("503 5.5.1")
    assert replies[8] == "235 2.7.0 Authentication successful"
    assert replies[11].startswith("250 2.0.0 Ok: ") and "queued as" in replies[12]
    relay.wait_for(lambda: len(relay.sink.messages()) == 1, what="the relayed message")
    relay.wait_queue_empty()
    received = relay.sink.messages()[0].body
    assert received.endswith(text.replace("\r\n", "\n").encode())  # the sink stores LF
    assert b"Subject: clear" not in received
    assert b"with ESMTPSA" in received and f"[{client_ip}]".encode() in received
    assert relay.maildir("postmaster") == []
