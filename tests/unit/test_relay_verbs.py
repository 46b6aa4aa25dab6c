"""ETRN, AUTH and ATRN on scripted streams: every reply code, no sockets."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress

import pytest

from tidepost.address import domain_matches
from tidepost.config.schema import Config, LocalConfig, SmtpServerConfig
from tidepost.smtp_server import auth as A
from tidepost.smtp_server import replies as S
from tidepost.smtp_server import turn as T
from tidepost.smtp_server.credentials import (Credentials, CredentialsError, format_line,
                                              parse_line, verify_password)
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.ratelimit import RateLimiter
from tidepost.smtp_server.turn import RelayConversation, RelayServices

CUSTOMERS = (".fleet.test", "shop.test")
PASSWORD = "s3cret"


class Writer:
    def __init__(self):
        self.data = bytearray()
        self.closed = False

    def write(self, data):
        self.data += data

    async def drain(self):
        pass

    def close(self):
        self.closed = True


class Directory:
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake
    def is_local_domain(self, domain):
        return domain in ("", "relay.test")

    def local_user_exists(self, local):
        return True

    def has_route(self, domain):
        return True

    def is_customer_domain(self, domain):
        return is_customer(domain)


def is_customer(domain):
    return any(domain_matches(domain, p) for p in CUSTOMERS)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "credentials"
    path.write_text("# users\n" + format_line("ship", PASSWORD, (".fleet.test",)) + "\n"
                    + format_line("nobody", PASSWORD) + "\n")
    return Credentials.load(path)


def services(credentials=None, networks=(), rate=100, waiting=3, atrn_rate=100):
    flushed = []

    async def flush_domain(domain, subdomains):
        flushed.append((domain, subdomains))
        return waiting

    relay = RelayServices(flush_domain=flush_domain, is_customer=is_customer,
                          etrn_limiter=RateLimiter(rate, now=lambda: 0.0),
                          atrn_limiter=RateLimiter(atrn_rate, now=lambda: 0.0),
                          etrn_networks=tuple(ipaddress.ip_network(n) for n in networks),
                          credentials=credentials, pending=lambda patterns: waiting,
                          deliver_over=None)
    return relay, flushed


def converse(script: bytes, relay: RelayServices, peer_ip="198.51.100.7") -> list[Reply]:
    config = dataclasses.replace(Config(), hostname="relay.test",
                                 local=LocalConfig(domains=("relay.test",)),
                                 smtp=SmtpServerConfig(relay_networks=()))
    writer = Writer()

    async def main():
        stream = asyncio.StreamReader()
        stream.feed_data(script)
        stream.feed_eof()
        await RelayConversation(config, Directory(), stream, writer, peer_ip=peer_ip,
                                relay=relay).run()
    asyncio.run(main())
    lines = bytes(writer.data).decode().split("\r\n")[:-1]
    return [Reply.parse(line) for line in lines if line[3] == " "]


def ehlo_lines(relay, peer_ip="198.51.100.7") -> str:
    config = dataclasses.replace(Config(), hostname="relay.test")
    writer = Writer()

    async def main():
        stream = asyncio.StreamReader()
        stream.feed_data(b"EHLO me\r\n")
        stream.feed_eof()
        await RelayConversation(config, Directory(), stream, writer, peer_ip=peer_ip,
                                relay=relay).run()
    asyncio.run(main())
    return bytes(writer.data).decode()


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# -- ETRN ---------------------------------------------------------------------

def test_etrn_is_advertised():
    relay, _ = services()
    assert "250-ETRN\r\n" in ehlo_lines(relay) or "250 ETRN\r\n" in ehlo_lines(relay)


def test_etrn_domain_and_subdomains_start_the_queue():
    relay, flushed = services()
    replies = converse(b"EHLO me\r\nETRN shop.test\r\nETRN @Fleet.Test\r\n", relay)
    assert replies[2:] == [T.s253_started("shop.test", 3), T.s253_started("@Fleet.Test", 3)]
    assert flushed == [("shop.test", False), ("fleet.test", True)]
    assert relay.statistics["etrn"] == 2


def test_etrn_with_nothing_waiting_is_251():
    relay, _ = services(waiting=0)
    assert converse(b"EHLO me\r\nETRN a.fleet.test\r\n", relay)[-1] == \
        T.s251_none_waiting("a.fleet.test")


def test_etrn_refusals():
    relay, flushed = services()
    replies = converse(b"ETRN shop.test\r\nEHLO me\r\nETRN other.test\r\nETRN\r\n"
                       b"ETRN bad..domain\r\nETRN #queue\r\nETRN a b\r\n"
                       b"MAIL FROM:<a@b.test>\r\nETRN shop.test\r\n", relay)
    assert replies[1] == S.S503_HELO_FIRST
    assert replies[3] == T.s459_not_allowed("other.test", "we hold no mail for it")
    assert replies[4] == replies[5] == replies[7] == T.S501_ETRN_SYNTAX
    assert replies[6] == T.s458_unable("#queue", "named queues are not supported")
    assert replies[-1] == T.S503_IN_TRANSACTION
    assert flushed == []


def test_etrn_flood_gets_458():
    relay, flushed = services(rate=2)
    replies = converse(b"EHLO me\r\n" + b"ETRN shop.test\r\n" * 3, relay)
    assert [r.code for r in replies[2:]] == [253, 253, 458]
    assert replies[-1] == T.s458_too_many("shop.test") and len(flushed) == 2


def test_etrn_syntax_is_checked_before_the_budget():
    relay, flushed = services(rate=1)
    replies = converse("EHLO me\r\nETRN bücher.example\r\nETRN @\r\nETRN #\r\n"
                       "ETRN [192.0.2.1]\r\nETRN shop.test\r\nETRN xn--bcher-kva.example\r\n"
                       "ETRN bücher.example\r\n".encode(), relay)
    assert replies[2:6] == [T.S501_ETRN_SYNTAX] * 4
    assert replies[6] == T.s253_started("shop.test", 3)  # the budget was still whole
    assert replies[7] == T.s458_too_many("xn--bcher-kva.example")
    assert replies[8] == T.S501_ETRN_SYNTAX  # still 501, not 458, once over budget
    assert flushed == [("shop.test", False)]


def test_rate_limiter_window():
    clock = [0.0]
    limiter = RateLimiter(2, 60.0, now=lambda: clock[0])
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")
    clock[0] = 61.0
    assert limiter.allow("a")


def test_rate_limiter_forgets_only_idle_clients(monkeypatch):
    monkeypatch.setattr("tidepost.smtp_server.ratelimit.MAX_CLIENTS", 4)
    clock = [0.0]
    limiter = RateLimiter(1, 60.0, now=lambda: clock[0])
    assert all(limiter.allow(f"old{i}") for i in range(3))
    clock[0] = 100.0
    assert limiter.allow("busy") and len(limiter) == 4
    assert limiter.allow("new") and len(limiter) == 2      # the three idle ones went
    assert not limiter.allow("busy")                        # its budget is still spent


def test_etrn_networks_restrict_who_may_ask(credentials):
    relay, flushed = services(credentials, networks=("192.0.2.0/24",))
    assert converse(b"EHLO me\r\nETRN shop.test\r\n", relay)[-1] == \
        T.s459_not_allowed("shop.test", "not for this client")
    assert converse(b"EHLO me\r\nETRN shop.test\r\n", relay, "192.0.2.9")[-1].code == 253
    # an authenticated customer may ask for its own domains from anywhere (loopback: AUTH ok)
    replies = converse(f"EHLO me\r\nAUTH PLAIN {plain('ship', PASSWORD)}\r\n"
                       "ETRN @fleet.test\r\nETRN shop.test\r\n".encode(), relay,
                       "127.0.0.1")
    assert replies[-3:] == [A.S235_AUTHENTICATED, T.s253_started("@fleet.test", 3),
                            T.s459_not_allowed("shop.test", "not for this client")]
    assert ("fleet.test", True) in flushed


# -- AUTH ---------------------------------------------------------------------

def test_auth_offered_only_on_loopback_or_tls(credentials):
    relay, _ = services(credentials)
    assert "AUTH PLAIN LOGIN" in ehlo_lines(relay, "127.0.0.1")
    assert "AUTH" not in ehlo_lines(relay, "198.51.100.7")
    replies = converse(f"EHLO me\r\nAUTH PLAIN {plain('ship', PASSWORD)}\r\n".encode(), relay)
    assert replies[-1] == A.S538_NEEDS_TLS


class TrickleStream:
    """Hands out a script at once, then one octet of `trickle` every 50 ms."""

    def __init__(self, script: bytes, trickle: bytes):
        self.script, self.trickle = script, trickle

    async def read(self, n: int = -1) -> bytes:
        if self.script:
            data, self.script = self.script, b""
            return data
        await asyncio.sleep(0.05)
        data, self.trickle = self.trickle[:1], self.trickle[1:]
        return data


def test_trickled_auth_response_line_meets_the_command_deadline(credentials):
    relay, _ = services(credentials)
    config = dataclasses.replace(Config(), hostname="relay.test", smtp=SmtpServerConfig(
        relay_networks=(), command_deadline=0.3))
    writer = Writer()
    stream = TrickleStream(b"EHLO me\r\nAUTH PLAIN\r\n", plain("ship", PASSWORD).encode() * 9)

    async def main():
        await RelayConversation(config, Directory(), stream, writer, peer_ip="127.0.0.1",
                                relay=relay).run()
    asyncio.run(main())
    lines = bytes(writer.data).decode().split("\r\n")[:-1]
    assert lines[-2:] == ["334 ", S.S421_COMMAND_TIMEOUT.line()]
    assert writer.closed and relay.statistics["auth_ok"] == 0


def test_auth_plain_and_login(credentials):
    relay, _ = services(credentials)
    replies = converse(f"EHLO me\r\nAUTH PLAIN\r\n{plain('ship', PASSWORD)}\r\n"
                       "AUTH PLAIN x\r\n".encode(), relay, "127.0.0.1")
    assert replies[2] == Reply(334, "", "")
    assert replies[3:] == [A.S235_AUTHENTICATED, A.S503_ALREADY_AUTHENTICATED]
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    replies = converse(f"EHLO me\r\nAUTH LOGIN\r\n{b64('ship')}\r\n{b64(PASSWORD)}\r\n"
                       .encode(), relay, "::1")
    assert replies[-1] == A.S235_AUTHENTICATED


def test_auth_failures(credentials):
    relay, _ = services(credentials)
    replies = converse(f"EHLO me\r\nAUTH PLAIN {plain('ship', 'wrong')}\r\n"
                       f"AUTH PLAIN {plain('ghost', PASSWORD)}\r\nAUTH PLAIN !!!\r\n"
                       "AUTH CRAM-MD5\r\nAUTH LOGIN\r\n*\r\n".encode(), relay, "127.0.0.1")
    assert replies[2:] == [A.S535_BAD_CREDENTIALS, A.S535_BAD_CREDENTIALS,
                           A.S501_UNDECODABLE, A.S504_UNKNOWN_MECHANISM,
                           Reply(334, "", "VXNlcm5hbWU6"), A.S501_CANCELLED]
    assert relay.statistics["auth_failed"] == 2
    relay, _ = services(None)
    assert converse(b"EHLO me\r\nAUTH PLAIN x\r\n", relay, "127.0.0.1")[-1] == \
        A.S502_AUTH_UNAVAILABLE


def test_auth_plain_for_another_identity_is_refused_as_credentials(credentials):
    # RFC 4616 2: a well-formed PLAIN response whose authzid the server does not
    # allow fails authentication (535 5.7.8); it is not undecodable (501 5.5.2).
    relay, _ = services(credentials)
    other = base64.b64encode(f"nobody\0ship\0{PASSWORD}".encode()).decode()
    same = base64.b64encode(f"ship\0ship\0{PASSWORD}".encode()).decode()
    replies = converse(f"EHLO me\r\nAUTH PLAIN {other}\r\nAUTH PLAIN {same}\r\n".encode(),
                       relay, "127.0.0.1")
    assert replies[2:] == [A.S535_BAD_CREDENTIALS, A.S235_AUTHENTICATED]
    assert relay.statistics["auth_failed"] == 1


def test_authenticated_client_may_relay(credentials):
    relay, _ = services(credentials)
    replies = converse(f"EHLO me\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nRSET\r\n"
                       f"AUTH PLAIN {plain('nobody', PASSWORD)}\r\nMAIL FROM:<a@b.test>\r\n"
                       "RCPT TO:<x@far.test>\r\n".encode(), relay, "127.0.0.1")
    assert replies[3] == S.S550_RELAY_DENIED
    assert replies[-1] == S.S250_RECIPIENT_OK


def test_mail_auth_parameter_is_accepted_where_auth_is_offered(credentials):
    # RFC 4954 5: a server offering AUTH MUST take MAIL FROM's AUTH= parameter
    # (sendmail sends AUTH=<> after authenticating); without AUTH it stays unknown.
    relay, _ = services(credentials)
    replies = converse(f"EHLO me\r\nMAIL FROM:<a@b.test> AUTH=<>\r\nRSET\r\n"
                       f"AUTH PLAIN {plain('ship', PASSWORD)}\r\n"
                       "MAIL FROM:<a@b.test> AUTH=ship+2Bx@fleet.test\r\nRSET\r\n"
                       "MAIL FROM:<a@b.test> AUTH=bad+zz\r\n".encode(), relay, "127.0.0.1")
    assert replies[2:] == [S.S250_SENDER_OK, S.S250_OK, A.S235_AUTHENTICATED,
                           S.S250_SENDER_OK, S.S250_OK, S.S501_SYNTAX]
    relay, _ = services(None)
    assert converse(b"EHLO me\r\nMAIL FROM:<a@b.test> AUTH=<>\r\n", relay)[-1] == \
        S.S555_UNKNOWN_PARAMETER


def test_credentials_file_format():
    line = format_line("ship", "pw", ("fleet.test", ".boats.test"))
    identity = parse_line(line, "x")
    assert identity.domains == ("fleet.test", ".boats.test")
    assert verify_password("pw", identity.hashed) and not verify_password("px", identity.hashed)
    with pytest.raises(CredentialsError):
        parse_line("ship:plaintext", "x:1")
    with pytest.raises(ValueError):
        format_line("a:b", "pw")


# -- ATRN (refusals; the reversal itself runs in tests/integration) ----------

def test_atrn_refusals(credentials):
    relay, _ = services(credentials)
    relay.deliver_over = lambda patterns, smtp: None
    assert converse(b"EHLO me\r\nATRN fleet.test\r\n", relay, "127.0.0.1")[-1] == \
        A.S530_AUTH_REQUIRED
    auth = f"EHLO me\r\nAUTH PLAIN {plain('ship', PASSWORD)}\r\n"
    assert converse(f"{auth}ATRN shop.test\r\n".encode(), relay, "127.0.0.1")[-1] == \
        T.s450_refused("shop.test")
    assert converse(f"{auth}ATRN fleet.test,,\r\n".encode(), relay, "127.0.0.1")[-1] == \
        T.S501_ATRN_SYNTAX
    auth_nobody = f"EHLO me\r\nAUTH PLAIN {plain('nobody', PASSWORD)}\r\n"
    assert converse(f"{auth_nobody}ATRN\r\n".encode(), relay, "127.0.0.1")[-1].code == 450
    relay.pending = lambda patterns: 0
    assert converse(f"{auth}ATRN fleet.test\r\n".encode(), relay, "127.0.0.1")[-1] == \
        T.S453_NO_MAIL
    assert "ATRN" in ehlo_lines(relay)


def test_atrn_has_its_own_budget_apart_from_etrn(credentials):
    relay, _ = services(credentials, rate=2, atrn_rate=2)
    relay.deliver_over = lambda patterns, smtp: None
    relay.pending = lambda patterns: 0  # 453 tells a request that passed the limiter
    auth = f"EHLO me\r\nAUTH PLAIN {plain('ship', PASSWORD)}\r\n"
    replies = converse(f"{auth}{'ETRN @fleet.test' + chr(13) + chr(10)}"
                       "ETRN @fleet.test\r\nETRN @fleet.test\r\n"
                       "ATRN bücher.fleet.test\r\nATRN fleet.test\r\nATRN\r\n"
                       "ATRN fleet.test\r\n".encode(), relay, "127.0.0.1")
    assert [r.code for r in replies[3:6]] == [253, 253, 458]   # ETRN budget spent
    assert replies[6] == T.S501_ATRN_SYNTAX                    # syntax costs nothing
    assert replies[7:9] == [T.S453_NO_MAIL, T.S453_NO_MAIL]    # ATRN budget untouched
    assert replies[9] == T.S451_ATRN_LATER                     # ATRN's own budget spent


def test_odmr_port_refuses_other_commands(credentials):
    relay, _ = services(credentials)
    relay.odmr_only = True
    replies = converse(b"EHLO me\r\nMAIL FROM:<a@b.test>\r\nETRN shop.test\r\nQUIT\r\n",
                       relay, "127.0.0.1")
    assert replies[2:] == [T.S502_ODMR_ONLY, T.S502_ODMR_ONLY, S.S221_BYE]
    assert "ETRN" not in ehlo_lines(relay, "127.0.0.1")


# -- CRAM-MD5 (RFC 2195; RFC 2645 ODMR clients such as fetchmail use it) -----

@pytest.fixture(scope="module")
def cram_credentials(tmp_path_factory):
    path = tmp_path_factory.mktemp("cram") / "credentials"
    path.write_text(format_line("ship", PASSWORD, (".fleet.test",), cram_md5=True) + "\n"
                    + format_line("nocram", PASSWORD) + "\n")
    return Credentials.load(path)


class AnsweringWriter(Writer):
    """Answers each 334 challenge with `answer(challenge bytes)` fed back as input."""

    def __init__(self, stream, answer):
        super().__init__()
        self.stream, self.answer = stream, answer

    def write(self, data):
        super().write(data)
        for line in bytes(data).split(b"\r\n"):
            if line.startswith(b"334 "):
                self.stream.feed_data(self.answer(base64.b64decode(line[4:])) + b"\r\n")


def cram_session(relay, user, password, peer_ip="198.51.100.7") -> list[Reply]:
    """EHLO, AUTH CRAM-MD5 answered with HMAC-MD5(password, challenge), QUIT."""
    import hashlib
    import hmac
    config = dataclasses.replace(Config(), hostname="relay.test")

    def answer(challenge: bytes) -> bytes:
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        return base64.b64encode(f"{user} {digest}".encode())

    async def main():
        stream = asyncio.StreamReader()
        writer = AnsweringWriter(stream, answer)
        stream.feed_data(b"EHLO me\r\nAUTH CRAM-MD5\r\n")
        conversation = RelayConversation(config, Directory(), stream, writer,
                                         peer_ip=peer_ip, relay=relay)
        task = asyncio.create_task(conversation.run())
        await asyncio.sleep(0.2)
        stream.feed_data(b"QUIT\r\n")
        stream.feed_eof()
        await task
        return writer
    writer = asyncio.run(main())
    lines = bytes(writer.data).decode().split("\r\n")[:-1]
    return [Reply.parse(line) for line in lines if line[3] == " "]


def test_cram_md5_is_offered_without_tls_when_a_user_has_it(cram_credentials, credentials):
    relay, _ = services(cram_credentials)
    assert "AUTH CRAM-MD5\r\n" in ehlo_lines(relay, "198.51.100.7")  # no PLAIN in clear
    assert "AUTH PLAIN LOGIN CRAM-MD5\r\n" in ehlo_lines(relay, "127.0.0.1")
    relay, _ = services(credentials)  # nobody has a CRAM-MD5 secret
    assert "CRAM-MD5" not in ehlo_lines(relay, "127.0.0.1")


def test_cram_md5_authenticates_with_the_right_password_only(cram_credentials):
    relay, _ = services(cram_credentials)
    replies = cram_session(relay, "ship", PASSWORD)
    assert replies[2].code == 334 and replies[3] == A.S235_AUTHENTICATED
    relay, _ = services(cram_credentials)
    assert cram_session(relay, "ship", "wrong")[3] == A.S535_BAD_CREDENTIALS
    relay, _ = services(cram_credentials)
    assert cram_session(relay, "nocram", PASSWORD)[3] == A.S535_BAD_CREDENTIALS
    relay, _ = services(cram_credentials)
    replies = converse(f"EHLO me\r\nAUTH PLAIN {plain('ship', PASSWORD)}\r\n".encode(), relay)
    assert replies[-1] == A.S538_NEEDS_TLS  # a password in clear is still refused


def test_cram_md5_secret_in_the_credentials_file():
    identity = parse_line(format_line("ship", "pw", (), cram_md5=True), "x")
    assert identity.cram_secret == b"pw" and identity.domains == ()
    with pytest.raises(CredentialsError):
        parse_line(format_line("ship", "pw") + "::md5$AAAA", "x:1")


def test_the_databases_users_and_the_files_make_one_list_the_database_winning(tmp_path):
    from tidepost.queue.directory import CredentialRecord
    from tidepost.smtp_server.credentials import new_record
    path = tmp_path / "credentials"
    path.write_text(format_line("ship", "from-file", ("a.test",)) + "\n"
                    + format_line("boat", "boat-pw") + "\n")
    stored = new_record("ship", "from-db", ("b.test",))
    assert isinstance(stored, CredentialRecord) and "from-db" not in stored.hashed
    users = Credentials.combined([stored], Credentials.load(path))
    assert users.check("ship", "from-db") and not users.check("ship", "from-file")
    assert users.domains_of("ship") == ("b.test",)
    assert users.check("boat", "boat-pw")  # the file's other users still log in
    assert [r.user for r in Credentials.load(path).records()] == ["boat", "ship"]
    with pytest.raises(ValueError):
        new_record("bad user", "pw")
