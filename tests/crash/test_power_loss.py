"""Power loss: keep only what was fsync'd, and every acknowledged message is there.

`tidepost serve` runs with an LD_PRELOAD shim (shim/synced_only.c, built
here with gcc) that copies each spool file to a shadow spool whenever it is
fsync'd (fdatasync, syncfs too), before the real call: the shadow is what a
power cut would leave, writes never synced being lost.  Clients submit
over SMTP (the route is held, so everything stays queued) until the daemon
is SIGKILLed at a random moment.  Then tidepost starts on the shadow spool
(SQLite replays its WAL as after a real power loss) and every message that
got a 250 must be in the queue, with its recipients, in a sound database.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from kill_harness import TOKEN, Submitter, KillRun

pytestmark = [pytest.mark.integration, pytest.mark.crash]

SHIM = Path(__file__).parent / "shim" / "synced_only.c"
HELD = {"name": "internet", "domains": ["*"], "transport": "mx", "on_demand": True,
        "start_held": True}


@pytest.fixture
def shim(tmp_path) -> Path:
    """The shim, compiled for this test."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the LD_PRELOAD shim (./run-tests installs it)")
    library = tmp_path / "synced_only.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(SHIM), "-ldl"],
                   check=True)
    return library


def queued_tokens(spool: Path) -> dict[str, set[str]]:
    """{token: recipients} of the messages in a spool's queue; checks the database."""
    with sqlite3.connect(spool / "queue.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        found: dict[str, set[str]] = {}
        for body, local, domain in conn.execute(
                "SELECT b.body, r.local, r.domain FROM bodies b "
                "JOIN recipients r ON r.message_id=b.message_id"):
            for token in TOKEN.findall(bytes(body)):
                found.setdefault(token.decode(), set()).add(f"{local}@{domain}")
    return found


def test_every_acknowledged_message_survives_a_power_cut(tidepost_node, shim, tmp_path):
    rng = random.Random(int(os.environ.get("TIDEPOST_CRASH_SEED") or time.time()))
    node = tidepost_node(start=False, route=[HELD])
    shadow = tmp_path / "after-power-loss"
    node.spool.mkdir(parents=True)
    node.env = {"LD_PRELOAD": str(shim), "SYNCED_ONLY_SPOOL": str(node.spool.resolve()),
                "SYNCED_ONLY_SHADOW": str(shadow)}
    node.start()
    recipients = [f"user{i}@example.test" for i in range(4)]
    run = KillRun([Submitter(lambda: node.port, f"c{i}", recipients, random.Random(i))
                   for i in range(4)])
    for client in run.clients:
        client.start()
    time.sleep(rng.uniform(2.0, 4.0))
    node.kill()  # the power cut: what was not synced is not in the shadow
    for client in run.clients:
        client.stopping.set()
    for client in run.clients:
        client.join(30)
    acknowledged = run.acknowledged()
    assert len(acknowledged) > 50, "too little load to say anything"

    node.env = {}
    node.move_spool(shadow)
    node.start()  # tidepost itself opens the replayed spool
    node.wait_for(lambda: "queue loaded" in node.log_tail(5), what="the replayed queue loaded")
    node.stop()
    queued = queued_tokens(shadow)
    missing = {t: r for t, r in acknowledged.items() if not set(r) <= queued.get(t, set())}
    print(f"power loss: {len(acknowledged)} acknowledged, {len(queued)} in the replayed "
          f"queue, {len(missing)} missing")
    assert missing == {}
    assert set(queued) <= set(run.submitted())
