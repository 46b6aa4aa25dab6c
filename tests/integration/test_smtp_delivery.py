"""SMTP delivery against a real DNS server (unbound) and real receivers (smtp-sink).

unbound serves a static `test.` zone on 127.0.0.1; smtp-sink processes listen
on 127.0.0.2 (accepts all), 127.0.0.3 (4xx to RCPT), 127.0.0.5 (5xx to the
final "."), and [::1] (accepts all), all on one port that the agent uses as
[delivery] smtp_port.  127.0.0.4 has no listener (connection refused).
The process helpers live here until tests/integration/conftest.py has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tidepost.address import parse_mailbox
from tidepost.config.schema import DeliveryConfig, DnsConfig, RouteConfig
from tidepost.model import DeliveryJob, MessageInfo, QueuedRecipient
from tidepost.resolver.resolver import Resolver
from tidepost.delivery.smtp import SmtpAgent
from tidepost.testing.clock import FakeClock
from tidepost.testing.dns import unbound_config

pytestmark = pytest.mark.integration

UNBOUND = "/usr/sbin/unbound"
SMTP_SINK = "/usr/sbin/smtp-sink"
BODY = b"Subject: integration\r\n\r\nfirst line\r\n.leading dot\r\nlast line\r\n"

ZONE = """\
good.test. 300 MX 10 mx1.good.test.
mx1.good.test. 300 A 127.0.0.2
fallback.test. MX 10 dead.fallback.test.
fallback.test. MX 20 mx2.fallback.test.
dead.fallback.test. A 127.0.0.4
mx2.fallback.test. A 127.0.0.2
implicit.test. A 127.0.0.2
nullmx.test. MX 0 .
soft.test. MX 10 mx.soft.test.
mx.soft.test. A 127.0.0.3
hard.test. MX 10 mx.hard.test.
mx.hard.test. A 127.0.0.5
down.test. MX 10 mx.down.test.
mx.down.test. A 127.0.0.4
v6.test. MX 10 mx.v6.test.
mx.v6.test. AAAA ::1
dual.test. AAAA ::1
dual.test. A 127.0.0.2
cname.test. MX 10 alias.cname.test.
alias.cname.test. CNAME mx1.good.test.
numeric.test. MX 10 127.0.0.2.
backup.test. MX 10 mx.soft.test.
backup.test. MX 20 mx1.good.test.
"""


def free_port(*hosts: str) -> int:
    """A TCP and UDP port that is free on every one of `hosts`."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if all(_port_free(host, port) for host in hosts):
            return port
    raise RuntimeError("no common free port")


def _port_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` for TCP and UDP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(family, kind) as probe:
                probe.bind((host, port))
    except OSError:
        return False
    return True


def wait_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@contextlib.contextmanager
def running(argv: list[str], ready) -> subprocess.Popen:
    """Run a process until the block ends; `ready()` must return once it serves."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            ready()
        except Exception:
            process.kill()
            raise RuntimeError(f"{argv[0]} did not start: {process.communicate()[0]!r}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()


def dns_ready(port: int) -> None:
    """Wait until unbound answers for good.test."""
    resolver = Resolver(DnsConfig(nameservers=(f"127.0.0.1:{port}",), timeout=0.5))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if asyncio.run(resolver.mx("good.test")).records:
                return
        time.sleep(0.1)
    raise RuntimeError("unbound does not answer")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """unbound plus four smtp-sinks; yields (dns port, smtp port, dump folders)."""
    for binary in (UNBOUND, SMTP_SINK):
        if not shutil.which(binary):
            pytest.skip(f"{binary} is not installed")
    folder = tmp_path_factory.mktemp("smtp-delivery")
    dns_port = free_port("127.0.0.1")
    smtp_port = free_port("127.0.0.2", "127.0.0.3", "127.0.0.5", "::1")
    sinks = {"127.0.0.2": [], "127.0.0.3": ["-r", "RCPT"], "127.0.0.5": ["-f", "."],
             "::1": []}
    with contextlib.ExitStack() as stack:
        conf = unbound_config(folder, ZONE.splitlines(), port=dns_port)
        stack.enter_context(running([UNBOUND, "-d", "-c", str(conf)],
                                    lambda: dns_ready(dns_port)))
        dumps = {}
        for host, options in sinks.items():
            dumps[host] = folder / f"sink-{host.replace(':', '_')}"
            dumps[host].mkdir()
            listen = f"[{host}]:{smtp_port}" if ":" in host else f"{host}:{smtp_port}"
            argv = [SMTP_SINK, "-u", "root", "-d", f"{dumps[host]}/m.", *options, listen, "10"]
            stack.enter_context(running(argv, lambda h=host: wait_tcp(h, smtp_port)))
        yield dns_port, smtp_port, dumps


def agent(world, **overrides) -> SmtpAgent:
    """An SmtpAgent using the test DNS server and the sinks' port."""
    dns_port, smtp_port, _ = world
    resolver = Resolver(DnsConfig(nameservers=(f"127.0.0.1:{dns_port}",), timeout=2.0))
    config = DeliveryConfig(smtp_port=smtp_port, connect_timeout=3.0, command_timeout=5.0,
                            **overrides)
    return SmtpAgent(config, resolver, "client.test", FakeClock())


def job(*addresses: str, nexthop: str = "", body: bytes = BODY) -> DeliveryJob:
    """A delivery job from sender@origin.test to `addresses`."""
    info = MessageInfo(1, "Q1", parse_mailbox("sender@origin.test"), 0.0, len(body))
    recipients = [QueuedRecipient(i, 1, parse_mailbox(a)) for i, a in enumerate(addresses, 1)]
    domain = addresses[0].split("@")[1]
    return DeliveryJob(info, recipients, "uplink", nexthop or domain, body)


def deliver(agent_: SmtpAgent, *jobs: DeliveryJob, route: RouteConfig | None = None):
    """Deliver jobs over one session; return (outcomes per job, session)."""
    async def main():
        session = agent_.session(route, jobs[0].nexthop)
        try:
            return [await session.deliver(j) for j in jobs], session
        finally:
            await session.close()
    return asyncio.run(main())


def summary(outcomes) -> list[str]:
    """Verdict, status and answering host of each outcome."""
    return [f"{o.verdict.value} {o.status} {o.remote_mta}" for o in outcomes]


def dumped(folder: Path) -> list[bytes]:
    """Messages smtp-sink wrote to `folder`."""
    return [path.read_bytes() for path in sorted(folder.iterdir())]


def test_mx_delivery_reuses_one_connection(world):
    before = len(dumped(world[2]["127.0.0.2"]))
    results, session = deliver(agent(world), job("a@good.test", "b@good.test"),
                               job("c@good.test"))
    assert [summary(r) for r in results] == [
        ["delivered 2.0.0 mx1.good.test"] * 2, ["delivered 2.0.0 mx1.good.test"]]
    assert session.statistics() == {"connections": 1, "transactions": 2}
    messages = dumped(world[2]["127.0.0.2"])[before:]
    assert len(messages) == 2
    assert any(b"X-Rcpt-Args: <a@good.test>" in m and b"X-Rcpt-Args: <b@good.test>" in m
               for m in messages)
    # smtp-sink undoes dot-stuffing and writes LF line ends: the dot survived intact.
    assert all(b"\n.leading dot\n" in m for m in messages)


def test_refused_first_mx_falls_back_to_the_second(world):
    (outcomes,), _ = deliver(agent(world), job("a@fallback.test"))
    assert summary(outcomes) == ["delivered 2.0.0 mx2.fallback.test"]


def test_implicit_mx_delivers_to_the_domain_itself(world):
    (outcomes,), _ = deliver(agent(world), job("a@implicit.test"))
    assert summary(outcomes) == ["delivered 2.0.0 implicit.test"]


def test_ipv6_only_mx_host(world):
    (outcomes,), _ = deliver(agent(world), job("a@v6.test"))
    assert summary(outcomes) == ["delivered 2.0.0 mx.v6.test"]


def test_mx_host_that_is_a_cname_is_followed_to_its_address(world):
    # unbound's local data, like an authoritative server, answers with the
    # CNAME alone; the resolver must follow it itself (as Postfix does).
    (outcomes,), _ = deliver(agent(world), job("a@cname.test"))
    assert summary(outcomes) == ["delivered 2.0.0 alias.cname.test"]


def test_mx_host_written_as_an_address_is_dialled(world):
    (outcomes,), _ = deliver(agent(world), job("a@numeric.test"))
    assert summary(outcomes) == ["delivered 2.0.0 127.0.0.2"]


def test_null_mx_and_nxdomain_bounce(world):
    (null,), _ = deliver(agent(world), job("a@nullmx.test"))
    (missing,), _ = deliver(agent(world), job("a@nosuch.test"))
    assert summary(null) == ["bounced 5.1.10 "]
    assert null[0].reason == "Domain does not accept mail (null MX)"
    assert summary(missing) == ["bounced 5.1.2 "]


def test_4xx_to_rcpt_defers_and_5xx_after_data_bounces(world):
    (soft,), _ = deliver(agent(world), job("a@soft.test"))
    (hard,), _ = deliver(agent(world), job("a@hard.test", "b@hard.test"))
    assert summary(soft) == ["deferred 4.3.0 mx.soft.test"]
    assert summary(hard) == ["bounced 5.3.0 mx.hard.test"] * 2
    assert "(in reply to end of DATA)" in hard[0].reason


def test_4xx_to_rcpt_at_the_primary_mx_delivers_through_the_backup(world):
    before = len(dumped(world[2]["127.0.0.2"]))
    (outcomes,), _ = deliver(agent(world), job("a@backup.test", "b@backup.test"))
    assert summary(outcomes) == ["delivered 2.0.0 mx1.good.test"] * 2
    assert len(dumped(world[2]["127.0.0.2"])) == before + 1


def test_no_host_answers_fails_the_destination(world):
    (outcomes,), session = deliver(agent(world), job("a@down.test", "b@down.test"))
    reason = f"connect to mx.down.test[127.0.0.4]:{world[1]}: Connection refused"
    assert [(o.verdict.value, o.status, o.reason) for o in outcomes] == \
        [("deferred", "4.4.1", reason)] * 2
    assert session.destination_failed == ("4.4.1", reason)


def test_bracketed_smarthost(world):
    route = RouteConfig(name="uplink", transport="smarthost")
    the_job = job("x@elsewhere.example", nexthop=f"[mx1.good.test]:{world[1]}")
    (outcomes,), _ = deliver(agent(world), the_job, route=route)
    assert summary(outcomes) == ["delivered 2.0.0 mx1.good.test"]


def test_resolver_returns_both_families_and_ttls(world):
    resolver = Resolver(DnsConfig(nameservers=(f"127.0.0.1:{world[0]}",), timeout=2.0))

    async def main():
        return (await resolver.addresses("dual.test"), await resolver.mx("good.test"),
                await resolver.mx("implicit.test"), await resolver.mx("nosuch.test"))
    addresses, good, implicit, missing = asyncio.run(main())
    assert addresses == ["::1", "127.0.0.2"]
    assert [(r.preference, r.exchange) for r in good.records] == [(10, "mx1.good.test")]
    assert 0 < good.ttl <= 300
    assert implicit.records == () and implicit.exists
    assert not missing.exists
