"""What a metered link costs, with real daemons (issue 9, items 4 and 5).

- Accounting: a site delivers to smtp-sink over its uplink; `tidepost link
  usage` exports the bytes, messages, connections and per-sender bytes the
  link meter wrote to SPOOL/usage.sqlite, which match what crossed the wire.
- Data caps: at `cap_day` the route holds itself (and stays held across a
  restart), the postmaster gets one notice, an urgent message still goes.
- Size: a message too big for the first route waits for the next one, and
  its sender is told once.
- The hang-up signal: after a release the site delivers its queue and asks
  its upstream relay (another `tidepost serve`) for its mail by ETRN; the
  route's hangup_command runs exactly once, after the last delivery, after
  the ETRN answer and after the relay's mail for the site has arrived.
"""

from __future__ import annotations

import json
import shlex
import sys
import time

import pytest

pytestmark = pytest.mark.integration

KIB = 1024


def uplink(port: int, host: str = "127.0.0.2", **options) -> dict:
    """A held, on-demand smarthost route to host:port, one connection at a time."""
    return {"name": "uplink", "domains": ["*"], "transport": "smarthost",
            "smarthost": f"[{host}]:{port}", "on_demand": True, "start_held": True,
            "concurrency": 1, **options}


def message(n: int, size: int = 2 * KIB, headers: str = "") -> str:
    """Message n of about `size` bytes; Subject `cost n`."""
    line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    return (f"From: carol@site.test\r\nSubject: cost {n}\r\n{headers}\r\n"
            + line * (size // len(line)))


def link(site, *args: str) -> str:
    """`tidepost link ARGS -c CONFIG`, its standard output."""
    return site.cli("link", *args, "-c", str(site.config_path)).stdout.decode()


def subjects(sink) -> list[str]:
    """The Subject tags the sink received, in order."""
    return [m.body.split(b"Subject: ", 1)[1].split(b"\n", 1)[0].strip().decode()
            for m in sink.messages()]


def test_link_usage_exports_what_the_wire_carried(tidepost_node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    site = tidepost_node(route=[uplink(sink_port)])
    for n in range(5):
        site.send("carol@site.test" if n % 2 else "dave@site.test", [f"r{n}@far.test"],
                  message(n, 3 * KIB))
    link(site, "up", "uplink")
    site.wait_queue_empty()
    def month() -> list[dict]:
        return json.loads(link(site, "usage", "--json", "--period", "month"))
    # written every few seconds; online time once the connection has closed
    site.wait_for(lambda: month() and month()[0]["online_seconds"] > 0, timeout=20,
                  what="the counts written")
    [row] = month()
    sent = sum(len(m.body) for m in sink.messages())  # as the sink stored them
    assert row["route"] == "uplink" and row["messages"] == 5 and row["recipients"] == 5
    assert row["connections"] == 1 and row["online_seconds"] > 0
    # TCP payload up: the messages (with our Received header) plus SMTP commands
    assert sent < row["payload_up"] < sent + 5 * 600
    assert row["bytes_up"] > row["payload_up"]        # plus IP/TCP headers
    assert 0 < row["payload_down"] < 2000             # the server's replies
    by_sender = {r["sender"]: r for r in json.loads(link(site, "usage", "--senders",
                                                         "--json"))}
    assert by_sender["carol@site.test"]["messages"] == 2
    assert by_sender["dave@site.test"]["messages"] == 3
    assert by_sender["dave@site.test"]["bytes"] > 3 * 3 * KIB
    csv = link(site, "usage", "--csv", "--route", "uplink")
    assert csv.splitlines()[0].startswith("period,route,bytes_up,bytes_down")


def test_a_route_at_its_daily_cap_holds_itself_and_urgent_mail_still_goes(
        tidepost_node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    site = tidepost_node(route=[uplink(sink_port, cap_day="40k")])
    for n in range(8):
        site.send("carol@site.test", [f"r{n}@far.test"], message(n, 16 * KIB))
    link(site, "up", "uplink")
    site.wait_for(lambda: "held at its data cap" in site.log_tail(300), what="the cap")
    time.sleep(2.0)
    delivered = len(sink.messages())
    assert 2 <= delivered <= 5, delivered  # 16 KiB each; a job or two was on its way
    site.wait_for(lambda: len(site.maildir("postmaster")) == 1, what="the postmaster's notice")
    notice = site.maildir("postmaster")[0]
    assert b"Subject: Route uplink reached its data cap today" in notice
    assert "held at its data cap" in link(site, "plan", "uplink")
    assert "up, capped" in link(site, "status")

    site.send("carol@site.test", ["boss@far.test"], message(99, headers="Priority: urgent\r\n"))
    site.wait_for(lambda: "cost 99" in subjects(sink), what="the urgent message")
    site.restart()  # the hold is durable; nothing more goes
    link(site, "up", "uplink")
    time.sleep(3.0)
    assert len(sink.messages()) == delivered + 1
    assert site.queue().count("@far.test") == 8 - delivered
    assert len(site.maildir("postmaster")) == 1  # told once this day


def test_a_message_too_big_for_the_uplink_waits_and_its_sender_is_told_once(tidepost_node):
    site = tidepost_node(route=[
        {"name": "uplink", "domains": ["*"], "max_message_size": "10k", "start_held": True},
        {"name": "harbour", "domains": ["*"], "start_held": True}])
    site.send("carol@site.test", ["far@away.test"], message(1, 30 * KIB))
    site.send("carol@site.test", ["far@away.test"], message(2, 1 * KIB))  # small: no notice
    site.wait_for(lambda: len(site.maildir("carol")) == 1, what="the notice to carol")
    notice = site.maildir("carol")[0]
    assert b"Subject: Your message waits for a route that takes its size" in notice
    assert b"route uplink takes messages up to 10.0 KiB" in notice
    assert b"waits for route harbour" in notice and b"cost 1" in notice
    site.restart()
    time.sleep(2.0)
    assert len(site.maildir("carol")) == 1  # once, not at every start


SITE_ZONE = ["site.test. 300 MX 10 mx.site.test.", "mx.site.test. 300 A 127.0.0.1"]


def stamp(path) -> str:
    """A hang-up command that appends the time it ran to `path`."""
    return shlex.join([sys.executable, "-c",
                       "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n')",
                       str(path)])


def test_the_hangup_command_runs_once_after_the_last_delivery_and_the_relays_mail(
        tidepost_node, smtp_sink, sink_port, unbound, tmp_path):
    # -w 1: the sink waits a second before each reply to DATA, so the drain takes a while
    sink = smtp_sink("127.0.0.2", sink_port, options=["-w", "1"])
    ran = tmp_path / "hangup-ran"
    site = tidepost_node(start=False,
                         smtp={"relay_networks": ["192.0.2.0/24"]})  # the relay is outside
    relay = tidepost_node(dns=unbound(SITE_ZONE), smtp_port=site.port, hostname="relay.test",
                          local={"domains": ["relay.test"], "users": [], "system_users": False},
                          relay={"customer_domains": ["site.test"]})
    for n in range(3):
        relay.send("x@far.test", ["alice@site.test"], message(100 + n))
    site.config["route"] = [uplink(sink_port, hangup_command=stamp(ran), hangup_grace="2s",
                                   idle_timeout="300s", etrn=[f"127.0.0.1:{relay.port}"],
                                   etrn_domains=["site.test"])]
    to_toml = sys.modules[type(site).__module__].to_toml
    site.config_path.write_text(to_toml(site.config))
    site.start()
    for n in range(4):  # locally: SMTP from 127.0.0.1 may not relay here
        site.sendmail(["-f", "carol@site.test", f"r{n}@far.test"], message(n))
    time.sleep(1.0)
    assert not ran.exists()
    released = time.time()
    link(site, "up", "uplink")
    site.wait_for(lambda: ran.exists(), timeout=60, what="the hang-up command")
    time.sleep(4.0)  # it must not run again
    [when] = [float(line) for line in ran.read_text().split()]
    last_sent = max(m.path.stat().st_mtime for m in sink.messages())
    arrived = max(p.stat().st_mtime for p in (site.spool / "mail" / "alice" / "new").iterdir())
    assert len(sink.messages()) == 4 and len(site.maildir("alice")) == 3
    assert when > last_sent and when > arrived and when > released
    assert when - max(last_sent, arrived) < 10  # the grace, not the dialer's idle timer
    log = site.log_tail(400)
    assert "ETRN site.test to 127.0.0.1" in log and "253" in log
    assert "drain complete" in log and "online seconds saved" in log


class SlowUpstream:
    """An ETRN server that answers after `answer_after` seconds, then connects back.

    Like a relay after ETRN, it then delivers one message to the site over
    SMTP, pausing `session_pause` seconds inside the session; `done_at` is
    when that session ended (its QUIT answered).
    """

    def __init__(self, site_port: int, answer_after: float, session_pause: float):
        import socket
        import threading
        self.site_port, self.answer_after, self.pause = site_port, answer_after, session_pause
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answered_at = self.done_at = 0.0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b"220 upstream.test ESMTP\r\n")
            stream.flush()
            for line in stream:
                verb = line.split()[0].upper() if line.split() else b""
                if verb == b"ETRN":
                    time.sleep(self.answer_after)
                    stream.write(b"253 2.0.0 OK, 1 pending message started\r\n")
                    self.answered_at = time.time()
                    threading.Thread(target=self._deliver, daemon=True).start()
                elif verb == b"QUIT":
                    stream.write(b"221 bye\r\n")
                    stream.flush()
                    return
                else:
                    stream.write(b"250 upstream.test\r\n")
                stream.flush()

    def _deliver(self) -> None:
        import smtplib
        with smtplib.SMTP("127.0.0.1", self.site_port, local_hostname="upstream.test") as s:
            s.ehlo()
            time.sleep(self.pause)
            s.sendmail("x@far.test", ["alice@site.test"], "Subject: from upstream\r\n\r\nhi\r\n")
        self.done_at = time.time()

    def close(self) -> None:
        self.listener.close()


def test_the_hangup_waits_for_a_slow_etrn_answer_and_the_upstreams_session(
        tidepost_node, smtp_sink, sink_port, tmp_path):
    sink = smtp_sink("127.0.0.2", sink_port)
    ran = tmp_path / "hangup-ran"
    site = tidepost_node(start=False, smtp={"relay_networks": ["192.0.2.0/24"]})
    upstream = SlowUpstream(site.port, answer_after=3.0, session_pause=3.0)
    try:
        site.config["route"] = [uplink(sink_port, hangup_command=stamp(ran),
                                       hangup_grace="1s", etrn=[f"127.0.0.1:{upstream.port}"],
                                       etrn_domains=["site.test"])]
        to_toml = sys.modules[type(site).__module__].to_toml
        site.config_path.write_text(to_toml(site.config))
        site.start()
        site.sendmail(["-f", "carol@site.test", "r1@far.test"], message(1))
        link(site, "up", "uplink")
        site.wait_for(lambda: ran.exists(), timeout=60, what="the hang-up command")
        [when] = [float(line) for line in ran.read_text().split()]
        assert len(sink.messages()) == 1 and len(site.maildir("alice")) == 1
        # our one message went in a moment; the signal waited 3 s for the ETRN
        # answer, then for the upstream's session (3 s more), then the grace
        assert upstream.answered_at and upstream.done_at
        assert when > upstream.done_at > upstream.answered_at
        assert when - upstream.done_at < 5
    finally:
        upstream.close()
