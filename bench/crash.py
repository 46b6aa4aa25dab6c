#!/usr/bin/env python3
"""Crash benchmark: duplicates and lost 250s per kill -9, under load.

The long runs of the crash tests, with the same harness
(tests/crash/kill_harness.py) and the same processes (tests/integration's
fixtures): CLIENTS SMTP clients submit as fast as they can while a daemon
is SIGKILLed every 0.3-1.0 s and started again.  Scenarios:

- remote: tidepost relays to a Postfix smtp-sink (plain SMTP); counted:
  duplicate transactions per kill (a remote 250 not yet recorded when the
  kill came), and messages stored without the client seeing their 250;
- maildir: tidepost delivers into Maildirs; counted the same way (the
  Maildir agent itself never writes twice, so what is counted is the
  "stored but the 250 never arrived" window of the SMTP server);
- t2t-sender, t2t-receiver: two tidepost nodes with XTIDEPOST TRANSFER
  (docs/EXTENSIONS.md), the sending node killed, then the receiving one.

At the end the queues drain and every acknowledged message must be
delivered (lost must be 0).  The ratio column compares duplicates per kill
with the remote (plain SMTP) run of the same invocation.  `--source DIR`
runs the daemons from another checkout's src/ (PYTHONPATH), for a before
and after comparison.  Needs smtp-sink (./run-tests installs it).
Usage: .venv/bin/python bench/crash.py [--kills 30] [--t2t-kills 100] [--clients 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "crash"))
import kill_harness as harness  # noqa: E402  (tests/crash is on the path now)


def fixtures():
    """tests/integration/conftest.py as a module: TidepostNode, SmtpSink, Processes."""
    spec = importlib.util.spec_from_file_location(
        "tidepost_integration_fixtures", ROOT / "tests" / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


F = fixtures()
USERS = ["alice", "carol", "dave"]


def smarthost(port: int, host: str = "127.0.0.1") -> list[dict]:
    """A route list sending everything to host:port."""
    return [{"name": "uplink", "domains": ["*"], "transport": "smarthost",
             "smarthost": f"[{host}]:{port}", "on_demand": False, "start_held": False}]


class Bench:
    """Processes and folders of one scenario."""

    def __init__(self, folder: Path, source: str | None):
        self.folder, self.source = folder, source
        self.processes = F.Processes()
        self.count = 0

    def node(self, **overrides) -> F.TidepostNode:
        self.count += 1
        folder = self.folder / f"node{self.count}"
        folder.mkdir()
        node = F.TidepostNode(self.processes, folder, overrides=overrides)
        if self.source:
            node.env = {"PYTHONPATH": self.source}
        return node.start()

    def relay(self) -> F.TidepostNode:
        return self.node(hostname="relay.test",
                         local={"domains": ["relay.test"], "users": list(F.LOCAL_USERS),
                                "system_users": False})

    def close(self) -> None:
        self.processes.stop_all()


def maildir_copies(node, domain: str):
    return harness.copies_of(([f"{user}@{domain}"], m) for user in USERS
                             for m in node.maildir(user))


def remote(bench: Bench, args) -> harness.Tally:
    port = F.free_port("127.0.0.2")
    folder = bench.folder / "sink"
    folder.mkdir()
    sink = F.SmtpSink(bench.processes, folder, "127.0.0.2", port).start()
    node = bench.node(route=smarthost(port, "127.0.0.2"))
    run = harness.submit_while_killing(lambda: node.port, [node],
                                       [f"u{i}@example.test" for i in range(5)], args.seed,
                                       args.kills, clients=args.clients)
    node.wait_queue_empty(timeout=600)
    return harness.tally(run, harness.copies_of((m.recipients, m.body)
                                                for m in sink.messages()))


def maildir(bench: Bench, args) -> harness.Tally:
    node = bench.node()
    run = harness.submit_while_killing(lambda: node.port, [node],
                                       [f"{u}@site.test" for u in USERS], args.seed,
                                       args.kills, clients=args.clients)
    node.wait_queue_empty(timeout=600)
    return harness.tally(run, maildir_copies(node, "site.test"))


def two_nodes(bench: Bench, args, kill_receiver: bool) -> harness.Tally:
    relay = bench.relay()
    site = bench.node(route=smarthost(relay.port))
    run = harness.submit_while_killing(lambda: site.port, [relay if kill_receiver else site],
                                       [f"{u}@relay.test" for u in USERS], args.seed,
                                       args.t2t_kills, clients=args.clients,
                                       pause=(0.2, 0.6))
    site.wait_queue_empty(timeout=600)
    relay.wait_queue_empty(timeout=600)
    return harness.tally(run, maildir_copies(relay, "relay.test"))


SCENARIOS = {
    "remote": remote,
    "maildir": maildir,
    "t2t-sender": lambda bench, args: two_nodes(bench, args, kill_receiver=False),
    "t2t-receiver": lambda bench, args: two_nodes(bench, args, kill_receiver=True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="kills per plain run")
    parser.add_argument("--t2t-kills", type=int, default=100,
                        help="kills of each node in the tidepost-to-tidepost runs")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--source", help="run the daemons from this src/ folder")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    args = parser.parse_args()
    print(f"seed {args.seed}, {args.clients} clients, source {args.source or 'this checkout'}")
    results: dict[str, harness.Tally] = {}
    for name in args.only or SCENARIOS:
        with tempfile.TemporaryDirectory(prefix=f"tidepost-crash-{name}-") as folder:
            bench = Bench(Path(folder), args.source)
            started = time.monotonic()
            try:
                results[name] = SCENARIOS[name](bench, args)
            finally:
                bench.close()
            print(f"  {results[name].line(name)} [{time.monotonic() - started:.0f} s]",
                  flush=True)
    reference = results.get("remote")
    print(f"\n{'scenario':<14}{'kills':>6}{'acked':>8}{'lost':>6}{'dup':>6}{'dup/kill':>10}"
          f"{'no250':>7}{'no250/kill':>12}{'dup ratio':>11}")
    for name, r in results.items():
        ratio = (f"{r.per_kill(r.duplicates) / reference.per_kill(reference.duplicates):.2f}"
                 if reference and reference.duplicates else "-")
        print(f"{name:<14}{r.kills:>6}{r.acknowledged:>8}{len(r.lost):>6}{r.duplicates:>6}"
              f"{r.per_kill(r.duplicates):>10.2f}{r.stored_without_250:>7}"
              f"{r.per_kill(r.stored_without_250):>12.2f}{ratio:>11}")
    return 1 if any(r.lost or r.strangers for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
