"""Messages pipelined on one connection, against real receivers (issue 9, item 3).

A site (`tidepost serve`) queues mail while its uplink is held, then
releases it over one connection (route concurrency 1), so every message
after the first goes out pipelined behind the one before:

- to another `tidepost serve` that refuses some recipients at RCPT time
  (unknown users): every recipient gets its own outcome, the accepted ones
  get each message exactly once, the refused ones bounce back to the sender;
- to a Postfix smtp-sink that dies after its fourth message (`-M 4`) in the
  middle of the pipeline: what got no answer is deferred, the message whose
  commands were already on their way never had its body sent, and after the
  sink is back everything arrives, nothing but the unanswered one twice;
- to a private Postfix that offers CHUNKING and refuses some recipients
  hard and some soft: BDAT is used (Postfix logs it), outcomes are exact.
"""

from __future__ import annotations

import re

import pytest
from private_postfix import private_postfix  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def uplink(host: str, port: int) -> list[dict]:
    """One held, on-demand smarthost route over one connection at a time."""
    return [{"name": "uplink", "domains": ["*"], "transport": "smarthost",
             "smarthost": f"[{host}]:{port}", "on_demand": True, "start_held": True,
             "concurrency": 1}]


def message(n: int) -> str:
    """Test message n; its Subject is `pipe n`."""
    return (f"From: carol@site.test\r\nSubject: pipe {n}\r\nMessage-ID: <pipe{n}@site.test>"
            f"\r\n\r\nline one of {n}\r\n.a line with a leading dot\r\nlast\r\n")


def subject(mail: bytes) -> str:
    """The Subject value of a delivered message."""
    return mail.split(b"Subject: ", 1)[1].split(b"\n", 1)[0].strip().decode()


def release(site) -> None:
    """`tidepost link up uplink`."""
    site.cli("link", "up", "uplink", "-c", str(site.config_path))


def connections(site) -> int:
    """TCP connections the site opened on its uplink (the link ledger)."""
    ledger = site.spool / "ledger.jsonl"
    return ledger.read_text().count('"what":"connect ') if ledger.exists() else 0


def test_pipelined_to_tidepost_every_recipient_settled_exactly_once(tidepost_node):
    server = tidepost_node(hostname="relay.test",
                           local={"domains": ["relay.test"], "users": ["alice", "bob"],
                                  "system_users": False})
    site = tidepost_node(route=uplink("127.0.0.1", server.port))
    wanted = {0: ["alice", "nobody"], 1: ["bob"], 2: ["alice", "bob"]}
    for n in range(18):
        site.send("carol@site.test", [f"{u}@relay.test" for u in wanted[n % 3]], message(n))
    release(site)
    site.wait_queue_empty()
    server.wait_for(lambda: len(server.maildir("alice")) == 12 and
                    len(server.maildir("bob")) == 12, what="the mail at the server")
    assert sorted(map(subject, server.maildir("alice"))) == sorted(
        f"pipe {n}" for n in range(18) if n % 3 != 1)
    assert sorted(map(subject, server.maildir("bob"))) == sorted(
        f"pipe {n}" for n in range(18) if n % 3 != 0)
    # the refused recipient bounced, once per message, back to the sender
    site.wait_for(lambda: len(site.maildir("carol")) == 6, what="6 bounces to carol")
    assert all(b"nobody@relay.test" in dsn for dsn in site.maildir("carol"))
    assert site.log_tail(400).count("bounced to=<nobody@relay.test>") == 6
    assert connections(site) == 1


def test_receiver_dying_mid_pipeline_loses_nothing_and_repeats_only_the_unanswered(
        tidepost_node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port, options=["-M", "4"])  # dies after 4 messages
    site = tidepost_node(route=uplink("127.0.0.2", sink_port),
                         queue={"min_backoff": "2s", "max_backoff": "2s",
                                "poll_interval": "0.2s"})
    for n in range(8):
        site.send("carol@site.test", [f"r{n}@far.test"], message(n))
    release(site)
    site.wait_for(lambda: sink.process.poll() is not None, what="the sink to die")
    site.wait_for(lambda: site.log_tail(400).count(" deferred ") >= 5,
                  what="the rest deferred")
    first = [subject(m.body) for m in sink.messages()]
    assert sorted(first) == ["pipe 0", "pipe 1", "pipe 2", "pipe 3"]
    sink.start()  # back, for good
    site.wait_queue_empty()
    second = [subject(m.body) for m in sink.messages()[len(first):]]
    # "pipe 3" died with the sink before its 250: sent again, as SMTP must;
    # "pipe 4" had its commands on the wire behind it, but never its body
    assert sorted(second) == [f"pipe {n}" for n in range(3, 8)]
    assert site.queue_empty()


POSTFIX_REFUSING = """\
relay_domains = pf.test
transport_maps = inline:{{ pf.test=smtp:[127.0.0.2]:{sink} }}
smtpd_recipient_restrictions = check_recipient_access inline:{{
    {{ refused@pf.test = 550 5.1.1 no such user }},
    {{ later@pf.test = 450 4.2.1 try again later }} }},
    permit_mynetworks, reject
"""


def test_chunking_with_postfix_refusing_some_recipients(tidepost_node, smtp_sink, sink_port,
                                                        private_postfix):
    sink = smtp_sink("127.0.0.2", sink_port)
    postfix = private_postfix(POSTFIX_REFUSING.format(sink=sink_port))
    site = tidepost_node(route=uplink("127.0.0.1", postfix.port))
    wanted = {0: ["ok1", "refused"], 1: ["ok2", "later"], 2: ["ok1", "ok2"]}
    for n in range(12):
        site.send("carol@site.test", [f"{u}@pf.test" for u in wanted[n % 3]], message(n))
    release(site)
    site.wait_for(lambda: len(sink.recipients()) == 16, what="the accepted mail at the sink",
                  timeout=60)
    got = sorted((subject(m.body), r) for m in sink.messages() for r in m.recipients)
    assert got == sorted((f"pipe {n}", f"{u}@pf.test") for n in range(12)
                         for u in wanted[n % 3] if u not in ("refused", "later"))
    log = site.log_tail(600)
    assert log.count("bounced to=<refused@pf.test>") == 4
    assert log.count("deferred to=<later@pf.test>") >= 4
    def summaries() -> list[str]:
        return [line for line in postfix.log().splitlines() if "disconnect from" in line]

    def bdat_commands() -> int:
        return sum(int(n) for line in summaries() for n in re.findall(r" bdat=(\d+)", line))

    # Postfix logs a session's summary when it ends, which may come after the
    # sink has the mail (and after the summary of a readiness probe)
    site.wait_for(lambda: bdat_commands() >= 12, what="Postfix's summary of the BDAT session")
    # one BDAT per message with an accepted recipient, none for the retries
    # of later@ alone (no body is sent to be refused), and never DATA
    assert bdat_commands() == 12
    assert not any(" data=" in line for line in summaries()), summaries()
    assert sorted(set(site.queue().split()) & {"refused@pf.test", "later@pf.test"}) \
        == ["later@pf.test"]  # only the soft refusal waits
