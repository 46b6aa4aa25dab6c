"""The SMTP client against scripted servers on 127.0.0.1: transcripts on the wire.

`ScriptedServer` answers each command from a small script (verb -> replies,
RCPT address -> reply) and records every connection's raw bytes, so tests
assert on what the client actually sent and how it grouped it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

import pytest

from tidepost.address import Address, parse_mailbox
from tidepost.config.schema import DeliveryConfig
from tidepost.model import BodyType, DeliveryJob, MessageInfo, QueuedRecipient, RecipientDsn
from tidepost.outcomes import Verdict
from tidepost.resolver.resolver import MxAnswer, MxRecord
from tidepost.smtp_client.replies import CLOSING, OK, SERVICE_NOT_AVAILABLE, START_MAIL_INPUT
from tidepost.smtp_client.session import Peer, open_session
from tidepost.smtp_client.transaction import Transaction, send_transaction
from tidepost.delivery.smtp import SmtpAgent
from tidepost.testing.clock import FakeClock

ALL_EXTENSIONS = ("PIPELINING", "SIZE 1000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")
BODY = b"Subject: test\r\n\r\nHello\r\n.hidden dot\r\n..two dots\r\nend\r\n"


@dataclass
class Connection:
    """What one client connection sent: raw chunks as read, and command lines."""

    chunks: list[bytes] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)  # raw DATA payloads, stuffed
    # What had already arrived behind each message's content when it ended:
    # the next transaction's commands, when the client pipelines them.
    buffered_after_content: list[bytes] = field(default_factory=list)
    tls: bool = False


class ScriptedServer:
    """A tiny SMTP server that replies from a script and records the wire."""

    def __init__(self, *, greeting: str = f"220 fake ESMTP", extensions=ALL_EXTENSIONS,
                 replies: dict[str, list[str]] | None = None,
                 rcpt: dict[str, str] | None = None, close_after: tuple[str, ...] = (),
                 tls_context=None, delays: dict[str, float] | None = None):
        self.greeting = greeting
        self.extensions = extensions
        self.replies = {verb: list(r) for verb, r in (replies or {}).items()}
        self.rcpt = rcpt or {}
        self.close_after = close_after  # verbs whose reply ends the connection (421 always)
        self.connections: list[Connection] = []
        self.port = 0
        self.tls_context = tls_context  # an ssl server context makes STARTTLS real
        self.tls_commands: list[str] = []  # commands received inside TLS
        self.delays = delays or {}  # verb -> seconds to wait before replying

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        conn = Connection()
        self.connections.append(conn)
        try:
            await self._converse(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _converse(self, reader, writer, conn: Connection) -> None:
        """Greet, then answer commands and DATA from one buffer.

        One loop rather than a command reader and a data reader, because a
        pipelining client mixes both in one read; it is 40-odd lines for that.
        """
        writer.write(self.greeting.encode() + b"\r\n")
        if not self.greeting.startswith("2"):
            await writer.drain()
            return
        buffer = b""
        in_data = False
        chunk_left = -1  # octets of a BDAT chunk still to come (-1: none)
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            conn.chunks.append(chunk)
            buffer += chunk
            while True:
                if chunk_left >= 0:
                    if len(buffer) < chunk_left:
                        break
                    conn.messages.append(buffer[:chunk_left])
                    buffer, chunk_left = buffer[chunk_left:], -1
                    buffer += await self._absorb(reader, conn, "BDAT")
                    conn.buffered_after_content.append(buffer)
                    if await self._reply(writer, "BDAT", "250 2.0.0 queued") is None:
                        return
                    continue
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0 and not buffer.startswith(b".\r\n"):
                        break
                    cut = 3 if buffer.startswith(b".\r\n") else end + 5
                    conn.messages.append(buffer[:cut])
                    buffer, in_data = buffer[cut:], False
                    buffer += await self._absorb(reader, conn, "DOT")
                    conn.buffered_after_content.append(buffer)
                    if await self._reply(writer, "DOT", "250 2.0.0 queued") is None:
                        return
                    continue
                if b"\r\n" not in buffer:
                    break
                line, buffer = buffer.split(b"\r\n", 1)
                command = line.decode()
                conn.commands.append(command)
                if command.upper().startswith("BDAT "):
                    chunk_left = int(command.split()[1])
                    continue
                reply = await self._reply(writer, command.split()[0].upper(),
                                          self._answer(command))
                if reply is None:
                    return
                if command.upper() == "DATA" and reply.startswith("354"):
                    in_data = True
                if command.upper() == "QUIT":
                    return
                if command.upper() == "STARTTLS" and self.tls_context and reply[:3] == "220":
                    await writer.start_tls(self.tls_context)
                    buffer, conn.tls = b"", True
                elif conn.tls:
                    self.tls_commands.append(command)
            await writer.drain()

    async def _absorb(self, reader, conn: Connection, verb: str) -> bytes:
        """With a delay for `verb`: wait it out here, taking in what arrives meanwhile."""
        delay, taken = self.delays.get(verb, 0.0), b""
        deadline = asyncio.get_running_loop().time() + delay
        while delay and (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            conn.chunks.append(chunk)
            taken += chunk
        return taken

    def _answer(self, command: str) -> str:
        """The scripted reply's default for `command`."""
        verb = command.split()[0].upper()
        if verb == "EHLO":
            lines = ["fake", *self.extensions]
            return "\r\n".join(f"250-{l}" for l in lines[:-1]) + f"\r\n250 {lines[-1]}"
        if verb == "RCPT":
            address = command[command.index("<") + 1:command.index(">")]
            if address in self.rcpt:
                return self.rcpt[address]
        return {"DATA": "354 go ahead", "QUIT": "221 bye"}.get(verb, "250 2.0.0 ok")

    async def _reply(self, writer, verb: str, default: str) -> str | None:
        """Send the next scripted reply for `verb` (else `default`); None: hung up."""
        queue = self.replies.get(verb)
        reply = queue.pop(0) if queue else default
        if self.delays.get(verb) and verb not in ("DOT", "BDAT"):  # those: _absorb
            await writer.drain()
            await asyncio.sleep(self.delays[verb])
        writer.write(reply.encode() + b"\r\n")
        await writer.drain()
        if reply.startswith("421") or verb in self.close_after:
            writer.close()  # as real servers do after 421
            return None
        return reply


def recipients(*addresses: str) -> list[QueuedRecipient]:
    """Queued recipients numbered from 1."""
    return [QueuedRecipient(i, 1, parse_mailbox(a)) for i, a in enumerate(addresses, 1)]


def config(**overrides) -> DeliveryConfig:
    """A DeliveryConfig with short timeouts."""
    return DeliveryConfig(**{"connect_timeout": 2.0, "command_timeout": 2.0, **overrides})


async def transact(server: ScriptedServer, tx: Transaction, **overrides):
    """Open a session to `server`, run one transaction, quit; return the outcomes."""
    session = await open_session(Peer("mx.test", "127.0.0.1", server.port), "client.test",
                                 config(**overrides))
    outcomes = await send_transaction(session, tx)
    await session.quit()
    return outcomes


def tx(*addresses: str, sender: str = "from@origin.test", **kw) -> Transaction:
    """A transaction of BODY to `addresses`."""
    return Transaction(parse_mailbox(sender), recipients(*addresses), kw.pop("body", BODY), **kw)


def verdicts(outcomes) -> list[str]:
    """Verdict and status of each outcome, compact."""
    return [f"{o.verdict.value} {o.status}" for o in outcomes]


# --- one transaction ---------------------------------------------------------------


def test_pipelining_sends_mail_rcpts_and_data_in_one_write():
    async def main():
        async with ScriptedServer() as server:
            outcomes = await transact(server, tx("a@dest.test", "b@dest.test"))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    grouped = [c for c in conn.chunks if c.startswith(b"MAIL FROM")]
    assert grouped == [b"MAIL FROM:<from@origin.test> SIZE=%d\r\nRCPT TO:<a@dest.test>\r\n"
                       b"RCPT TO:<b@dest.test>\r\nDATA\r\n" % len(BODY)]
    assert verdicts(outcomes) == ["delivered 2.0.0", "delivered 2.0.0"]
    assert outcomes[0].remote_mta == "mx.test"


def test_without_pipelining_commands_go_one_at_a_time():
    async def main():
        async with ScriptedServer(extensions=("8BITMIME",)) as server:
            await transact(server, tx("a@dest.test", "b@dest.test"))
        return server.connections[0]
    conn = asyncio.run(main())
    assert b"MAIL FROM:<from@origin.test>\r\n" in conn.chunks
    assert b"RCPT TO:<a@dest.test>\r\n" in conn.chunks
    assert b"DATA\r\n" in conn.chunks


def test_per_recipient_replies_decide_each_outcome():
    rcpt = {"soft@dest.test": "450 4.2.1 mailbox busy", "hard@dest.test": "550 5.1.1 no such user"}
    async def main():
        async with ScriptedServer(rcpt=rcpt) as server:
            return await transact(server, tx("ok@dest.test", "soft@dest.test", "hard@dest.test"))
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0", "deferred 4.2.1", "bounced 5.1.1"]
    assert "550 5.1.1 no such user (in reply to RCPT TO)" in outcomes[2].reason


def test_all_recipients_refused_sends_no_body():
    rcpt = {"a@dest.test": "550 5.1.1 no"}
    async def main():
        async with ScriptedServer(rcpt=rcpt, replies={"DATA": ["554 5.5.1 no valid recipients"]}) \
                as server:
            outcomes = await transact(server, tx("a@dest.test"))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.1.1"]
    assert conn.messages == []


def test_5xx_after_data_bounces_every_accepted_recipient():
    async def main():
        async with ScriptedServer(replies={"DOT": ["554 5.7.1 spam"]},
                                  rcpt={"c@dest.test": "451 4.3.0 later"}) as server:
            return await transact(server, tx("a@dest.test", "b@dest.test", "c@dest.test"))
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.7.1", "bounced 5.7.1", "deferred 4.3.0"]
    assert "(in reply to end of DATA)" in outcomes[0].reason


def test_4xx_after_data_defers_and_no_enhanced_code_uses_class():
    async def main():
        async with ScriptedServer(replies={"DOT": ["452 try later"]}) as server:
            return await transact(server, tx("a@dest.test"))
    assert verdicts(asyncio.run(main())) == ["deferred 4.0.0"]


def test_dot_stuffing_on_the_wire():
    body = b".first\r\nmiddle\r\n.\r\n..x\r\nlast\r\n"
    async def main():
        async with ScriptedServer() as server:
            await transact(server, tx("a@dest.test", body=body))
        return server.connections[0]
    conn = asyncio.run(main())
    assert conn.messages == [b"..first\r\nmiddle\r\n..\r\n...x\r\nlast\r\n.\r\n"]


def test_mail_from_parameters_follow_extensions_and_message():
    async def main():
        async with ScriptedServer() as server:
            await transact(server, tx("ü@dest.test", body_type=BodyType.EIGHT_BIT_MIME))
        return server.connections[0]
    conn = asyncio.run(main())
    mail = next(c for c in conn.commands if c.startswith("MAIL"))
    assert mail == f"MAIL FROM:<from@origin.test> SIZE={len(BODY)} BODY=8BITMIME SMTPUTF8"


def dsn_transaction() -> Transaction:
    """Two recipients, one with NOTIFY and ORCPT, in a message with RET and ENVID."""
    asked, plain = recipients("a@dest.test", "b@dest.test")
    asked = dataclasses.replace(asked, dsn=RecipientDsn("SUCCESS,FAILURE",
                                                        "rfc822;Old+1 x@site.test"))
    return Transaction(parse_mailbox("from@origin.test"), [asked, plain], BODY, ret="HDRS",
                       envid="id=7 x")


def test_dsn_parameters_go_on_to_a_next_hop_that_offers_dsn_and_it_owns_the_report():
    async def main():
        async with ScriptedServer(extensions=(*ALL_EXTENSIONS, "DSN")) as server:
            outcomes = await transact(server, dsn_transaction())
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    mail = next(c for c in conn.commands if c.startswith("MAIL"))
    assert mail.endswith(" RET=HDRS ENVID=id+3D7+20x")
    rcpts = [c for c in conn.commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE "
                     "ORCPT=rfc822;Old+2B1+20x@site.test",
                     "RCPT TO:<b@dest.test>"]
    assert [o.action for o in outcomes] == ["", ""]  # no "relayed" report from us


def test_without_dsn_at_the_next_hop_nothing_is_passed_and_we_report_relayed():
    async def main():
        async with ScriptedServer() as server:
            outcomes = await transact(server, dsn_transaction())
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert not any("NOTIFY" in c or "RET=" in c or "ORCPT" in c for c in conn.commands)
    assert [o.action for o in outcomes] == ["relayed", "relayed"]


def test_8bit_mail_to_server_without_8bitmime_is_sent_without_body_param():
    async def main():
        async with ScriptedServer(extensions=("PIPELINING",)) as server:
            outcomes = await transact(server, tx("a@dest.test", body_type=BodyType.EIGHT_BIT_MIME))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert "MAIL FROM:<from@origin.test>" in conn.commands
    assert verdicts(outcomes) == ["delivered 2.0.0"]


def test_8bit_body_to_server_without_8bitmime_bounces_5_6_3_and_sends_nothing():
    # RFC 6152 3: such a message is converted or returned, never sent raw.
    body = "Subject: caf\u00e9\r\n\r\nGr\u00fc\u00dfe\r\n".encode()
    async def main():
        async with ScriptedServer(extensions=("PIPELINING",)) as server:
            outcomes = await transact(server, tx("a@dest.test", "b@dest.test", body=body,
                                                 body_type=BodyType.EIGHT_BIT_MIME))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.6.3"] * 2
    assert "does not support 8BITMIME" in outcomes[0].reason
    assert not any(c.startswith("MAIL") for c in conn.commands)
    assert conn.messages == []


def test_utf8_recipient_without_smtputf8_bounces_only_that_recipient():
    async def main():
        async with ScriptedServer(extensions=("PIPELINING", "SIZE")) as server:
            outcomes = await transact(server, tx("ascii@dest.test", "ü@dest.test"))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0", "bounced 5.6.7"]
    assert [c for c in conn.commands if c.startswith("RCPT")] == ["RCPT TO:<ascii@dest.test>"]


def test_utf8_sender_without_smtputf8_bounces_everyone_and_sends_nothing():
    async def main():
        async with ScriptedServer(extensions=("PIPELINING",)) as server:
            outcomes = await transact(server, tx("a@dest.test", sender="ü@origin.test"))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.6.7"]
    assert not any(c.startswith("MAIL") for c in conn.commands)


def test_message_over_announced_size_bounces_5_3_4():
    async def main():
        async with ScriptedServer(extensions=("PIPELINING", "SIZE 10")) as server:
            return await transact(server, tx("a@dest.test"))
    assert verdicts(asyncio.run(main())) == ["bounced 5.3.4"]


def test_the_reply_to_the_dot_is_awaited_longer_than_other_replies():
    # RFC 5321 4.5.3.2.6: 10 minutes for the reply to the end of data (a
    # server may scan the message first); giving up earlier makes a duplicate.
    async def main():
        async with ScriptedServer(delays={"DOT": 1.0}) as server:
            return await transact(server, tx("a@dest.test"), command_timeout=0.3,
                                  data_done_timeout=3.0)
    assert verdicts(asyncio.run(main())) == ["delivered 2.0.0"]
    assert DeliveryConfig().data_done_timeout == 600.0


def test_mail_from_refused_settles_all_recipients():
    async def main():
        async with ScriptedServer(replies={"MAIL": ["553 5.7.1 sender refused"],
                                           "DATA": ["503 5.5.1 no"]}) as server:
            return await transact(server, tx("a@dest.test", "b@dest.test"))
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.7.1", "bounced 5.7.1"]
    assert "(in reply to MAIL FROM)" in outcomes[0].reason


def test_421_mid_transaction_defers_the_rest():
    async def main():
        async with ScriptedServer(replies={"RCPT": ["250 ok", "421 4.3.2 shutting down"]},
                                  extensions=("8BITMIME",)) as server:
            return await transact(server, tx("a@dest.test", "b@dest.test", "c@dest.test"))
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["deferred 4.3.2", "deferred 4.3.2", "deferred 4.3.2"]
    assert "421 4.3.2 shutting down" in outcomes[1].reason
    assert {o.diagnostic for o in outcomes} == {"421 4.3.2 shutting down"}  # the DSN's


def test_a_421_from_the_primary_mx_sends_the_message_to_the_next_one():
    async def main():
        async with ScriptedServer(replies={"RCPT": ["421 4.3.2 too busy"]}) as mx1, \
                ScriptedServer() as mx2:
            [outcomes] = await _deliver_two_mx(mx1, mx2, job("a@dest.test", "b@dest.test"))
        return mx2.connections, outcomes
    second, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0"] * 2
    assert {o.remote_mta for o in outcomes} == {"mx2.dest.test"}
    assert len(second[0].messages) == 1


def test_starttls_failure_falls_back_to_plain_text_on_a_new_connection():
    async def main():
        async with ScriptedServer(extensions=("PIPELINING", "STARTTLS"),
                                  replies={"STARTTLS": ["220 go ahead"]},
                                  close_after=("STARTTLS",)) as server:
            outcomes = await transact(server, tx("a@dest.test"))
        return server.connections, outcomes
    connections, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0"]
    assert len(connections) == 2
    assert "STARTTLS" not in connections[1].commands


def test_starttls_then_ehlo_again_inside_tls(tmp_path, caplog):
    server_context = _self_signed_server_context(tmp_path)
    async def main():
        async with ScriptedServer(extensions=("PIPELINING", "STARTTLS"),
                                  replies={"STARTTLS": ["220 2.0.0 ready"]},
                                  tls_context=server_context) as server:
            outcomes = await transact(server, tx("a@dest.test"))
        return server, outcomes
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        server, outcomes = asyncio.run(main())
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]
    assert verdicts(outcomes) == ["delivered 2.0.0"]
    assert len(server.connections) == 1
    assert server.connections[0].commands[:2] == ["EHLO client.test", "STARTTLS"]
    assert server.tls_commands[0] == "EHLO client.test"
    assert server.tls_commands[1].startswith("MAIL FROM:")


def _self_signed_server_context(tmp_path):
    """An ssl server context with a throw-away self-signed certificate."""
    import datetime
    import ssl
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


def test_ehlo_refused_falls_back_to_helo():
    async def main():
        async with ScriptedServer(replies={"EHLO": ["502 5.5.2 what?"]}) as server:
            outcomes = await transact(server, tx("a@dest.test"))
        return server.connections[0], outcomes
    conn, outcomes = asyncio.run(main())
    assert conn.commands[:2] == ["EHLO client.test", "HELO client.test"]
    assert "MAIL FROM:<from@origin.test>" in conn.commands  # no extensions after HELO
    assert verdicts(outcomes) == ["delivered 2.0.0"]


# --- the delivery agent: connections, reuse, hosts ------------------------------


class FakeResolver:
    """MX records and addresses from dictionaries."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], hosts: dict[str, list[str]]):
        self._mx, self._hosts = mx, hosts

    async def mx(self, domain: str) -> MxAnswer:
        records = tuple(MxRecord(p, h) for p, h in self._mx.get(domain, []))
        return MxAnswer(domain, records, 300)

    async def addresses(self, host: str) -> list[str]:
        return list(self._hosts.get(host, []))


def job(*addresses: str, body: bytes = BODY) -> DeliveryJob:
    """A delivery job for `addresses` from from@origin.test."""
    info = MessageInfo(1, "Q1", parse_mailbox("from@origin.test"), 0.0, len(body))
    return DeliveryJob(info, recipients(*addresses), "uplink", "dest.test", body)


def agent(resolver, port: int, **overrides) -> SmtpAgent:
    """An SmtpAgent dialling `port` on every host."""
    return SmtpAgent(config(smtp_port=port, **overrides), resolver, "client.test", FakeClock())


def one_host() -> FakeResolver:
    """dest.test has one MX host on 127.0.0.1."""
    return FakeResolver({"dest.test": [(10, "mx1.dest.test")]}, {"mx1.dest.test": ["127.0.0.1"]})


def test_two_jobs_share_one_connection_without_rset():
    async def main():
        async with ScriptedServer() as server:
            session = agent(one_host(), server.port).session(None, "dest.test")
            first = await session.deliver(job("a@dest.test"))
            second = await session.deliver(job("b@dest.test"))
            await session.close()
        return server.connections, first + second
    connections, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0", "delivered 2.0.0"]
    assert len(connections) == 1
    verbs = [c.split()[0].split(":")[0] for c in connections[0].commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "QUIT"]
    assert outcomes[0].remote_mta == "mx1.dest.test"


def test_rset_only_after_a_failed_transaction():
    async def main():
        async with ScriptedServer(replies={"MAIL": ["451 4.3.0 not now"],
                                           "DATA": ["503 no"]}) as server:
            session = agent(one_host(), server.port).session(None, "dest.test")
            first = await session.deliver(job("a@dest.test"))
            second = await session.deliver(job("b@dest.test"))
            await session.close()
        return server.connections, first + second
    connections, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["deferred 4.3.0", "delivered 2.0.0"]
    verbs = [c.split()[0].split(":")[0] for c in connections[0].commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


def test_421_after_data_defers_job_and_next_job_reconnects():
    async def main():
        async with ScriptedServer(replies={"DOT": ["421 4.4.2 closing"]}) as server:
            session = agent(one_host(), server.port).session(None, "dest.test")
            first = await session.deliver(job("a@dest.test", "b@dest.test"))
            second = await session.deliver(job("c@dest.test"))
            await session.close()
        return server.connections, first, second, session
    connections, first, second, session = asyncio.run(main())
    assert verdicts(first) == ["deferred 4.4.2", "deferred 4.4.2"]
    assert verdicts(second) == ["delivered 2.0.0"]
    assert len(connections) == 2
    assert session.destination_failed is None


def test_kept_connection_dropped_by_server_is_redialled_without_loss():
    async def main():
        async with ScriptedServer(replies={"MAIL": ["250 ok", "421 4.4.2 idle timeout"]}) \
                as server:
            session = agent(one_host(), server.port).session(None, "dest.test")
            first = await session.deliver(job("a@dest.test"))
            second = await session.deliver(job("b@dest.test"))
            await session.close()
        return server.connections, first + second, session
    connections, outcomes, session = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0", "delivered 2.0.0"]
    assert len(connections) == 2
    assert session.statistics() == {"connections": 2, "transactions": 2}


def test_recipients_split_across_transactions_on_one_connection():
    async def main():
        async with ScriptedServer() as server:
            session = agent(one_host(), server.port, recipients_per_transaction=2) \
                .session(None, "dest.test")
            outcomes = await session.deliver(job(*(f"r{i}@dest.test" for i in range(5))))
            await session.close()
        return server.connections, outcomes
    connections, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0"] * 5
    assert len(connections) == 1 and len(connections[0].messages) == 3


def test_refused_greeting_moves_on_to_the_next_host():
    async def main():
        async with ScriptedServer(greeting="554 5.7.1 go away") as bad, ScriptedServer() as good:
            resolver = FakeResolver({"dest.test": [(10, "mx1.dest.test"), (20, "mx2.dest.test")]},
                                    {"mx1.dest.test": ["127.0.0.1"], "mx2.dest.test": ["127.0.0.1"]})
            ports = {"mx1.dest.test": bad.port, "mx2.dest.test": good.port}
            session = agent(resolver, 0).session(None, "dest.test")
            session.target = session.target._replace(port=0)
            outcomes = await _deliver_with_ports(session, ports, job("a@dest.test"))
        return good.connections, outcomes
    connections, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0"]
    assert outcomes[0].remote_mta == "mx2.dest.test"
    assert len(connections) == 1


def two_mx() -> FakeResolver:
    """dest.test with MX hosts mx1 (10) and mx2 (20), both on 127.0.0.1."""
    return FakeResolver({"dest.test": [(10, "mx1.dest.test"), (20, "mx2.dest.test")]},
                        {"mx1.dest.test": ["127.0.0.1"], "mx2.dest.test": ["127.0.0.1"]})


async def _deliver_two_mx(primary: ScriptedServer, backup: ScriptedServer, *jobs: DeliveryJob):
    """Deliver `jobs` over one session to dest.test, mx1 = primary, mx2 = backup."""
    session = agent(two_mx(), 0).session(None, "dest.test")
    session.target = session.target._replace(port=0)
    ports = {"mx1.dest.test": primary.port, "mx2.dest.test": backup.port}
    return [await _deliver_with_ports(session, ports, j) for j in jobs]


def test_a_4xx_reply_from_the_primary_mx_sends_those_recipients_to_the_next_one():
    # RFC 5321 5.1 backup MX; Postfix (smtp_bulk_fail, smtp_rcpt_fail) keeps
    # a soft-failed recipient for the next server unless this one was the last.
    async def main():
        async with ScriptedServer(rcpt={"grey@dest.test": "450 4.7.1 greylisted",
                                        "gone@dest.test": "550 5.1.1 no such user"}) as mx1, \
                ScriptedServer() as mx2:
            [outcomes] = await _deliver_two_mx(mx1, mx2, job("ok@dest.test", "grey@dest.test",
                                                             "gone@dest.test"))
        return mx1.connections, mx2.connections, outcomes
    first, second, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0", "delivered 2.0.0", "bounced 5.1.1"]
    assert [o.remote_mta for o in outcomes] == ["mx1.dest.test", "mx2.dest.test",
                                                "mx1.dest.test"]
    assert len(first[0].messages) == 1
    assert [c for c in second[0].commands if c.startswith("RCPT")] == ["RCPT TO:<grey@dest.test>"]
    assert len(second[0].messages) == 1


def test_a_4xx_to_mail_from_at_the_primary_tries_the_next_mx_and_the_last_one_decides():
    async def main():
        async with ScriptedServer(replies={"MAIL": ["451 4.3.0 try later"] * 2}) as mx1, \
                ScriptedServer(replies={"MAIL": ["250 2.1.0 ok", "452 4.3.1 full"]}) as mx2:
            results = await _deliver_two_mx(mx1, mx2, job("a@dest.test"), job("b@dest.test"))
        return mx2.connections, results
    second, (one, two) = asyncio.run(main())
    assert verdicts(one) == ["delivered 2.0.0"] and one[0].remote_mta == "mx2.dest.test"
    assert verdicts(two) == ["deferred 4.3.1"] and two[0].remote_mta == "mx2.dest.test"
    assert len(second) == 2  # one backup connection per job, the primary kept for the next


async def _deliver_with_ports(session, ports: dict[str, int], the_job: DeliveryJob):
    """Deliver with each host on its own port (scripted servers share 127.0.0.1)."""
    import tidepost.delivery.smtp as smtp_module

    real = smtp_module.open_session

    async def open_on_port(peer, helo, cfg, **kw):
        return await real(Peer(peer.host, peer.address, ports[peer.host]), helo, cfg, **kw)

    smtp_module.open_session = open_on_port
    try:
        outcomes = await session.deliver(the_job)
        await session.close()
        return outcomes
    finally:
        smtp_module.open_session = real


def test_no_host_answers_defers_everyone_and_fails_the_destination():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        session = agent(one_host(), port).session(None, "dest.test")
        outcomes = await session.deliver(job("a@dest.test", "b@dest.test"))
        return port, session, outcomes
    port, session, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["deferred 4.4.1", "deferred 4.4.1"]
    expected = f"connect to mx1.dest.test[127.0.0.1]:{port}: Connection refused"
    assert outcomes[0].reason == expected
    assert session.destination_failed == ("4.4.1", expected)


def test_null_mx_bounces_every_recipient():
    resolver = FakeResolver({"dest.test": [(0, ".")]}, {})
    async def main():
        session = agent(resolver, 25).session(None, "dest.test")
        return session, await session.deliver(job("a@dest.test"))
    session, outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["bounced 5.1.10"]
    assert outcomes[0].reason == "Domain does not accept mail (null MX)"
    assert session.destination_failed is None


def test_unexpected_exception_becomes_deferred_4_3_0():
    class Broken(FakeResolver):
        async def mx(self, domain):
            raise RuntimeError("boom")
    async def main():
        session = agent(Broken({}, {}), 25).session(None, "dest.test")
        return await session.deliver(job("a@dest.test", "b@dest.test"))
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["deferred 4.3.0", "deferred 4.3.0"]
    assert all(o.verdict is Verdict.DEFERRED for o in outcomes)


def test_smarthost_with_port_and_brackets_skips_mx_lookup():
    class NoMx(FakeResolver):
        async def mx(self, domain):
            raise AssertionError("no MX lookup for a bracketed smarthost")
    from tidepost.config.schema import RouteConfig
    async def main():
        async with ScriptedServer() as server:
            route = RouteConfig(name="up", transport="smarthost")
            session = agent(NoMx({}, {"relay.test": ["127.0.0.1"]}), 25) \
                .session(route, f"[relay.test]:{server.port}")
            outcomes = await session.deliver(job("a@dest.test"))
            await session.close()
        return outcomes
    outcomes = asyncio.run(main())
    assert verdicts(outcomes) == ["delivered 2.0.0"]
    assert outcomes[0].remote_mta == "relay.test"


def test_reply_constants_match_the_transcript():
    assert (OK, START_MAIL_INPUT, CLOSING, SERVICE_NOT_AVAILABLE) == (250, 354, 221, 421)
    assert Address("a", "b.test").is_ascii
