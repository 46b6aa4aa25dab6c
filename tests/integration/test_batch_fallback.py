"""Plain SMTP, unchanged, for every peer that is not tidepost.

A tidepost site (XTIDEPOST BATCH on by default) delivers through smtp-sink,
which does not offer it: every message arrives over plain SMTP and the site
never starts a batch stream (an XBATCH to smtp-sink would be refused and the
mail would not arrive).  The other way round, Postfix delivering to a
tidepost node that offers XTIDEPOST is tests/integration/test_interop.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_non_tidepost_peer_gets_plain_smtp(tidepost_node, smtp_sink, sink_port):
    sink = smtp_sink("127.0.0.2", sink_port)
    site = tidepost_node(route=[{"name": "uplink", "domains": ["*"], "transport": "smarthost",
                                 "smarthost": f"[127.0.0.2]:{sink_port}"}])
    for n in range(5):
        site.send("alice@site.test", [f"user{n}@remote.test", "other@remote.test"],
                  f"Subject: plain {n}\r\n\r\nbody {n}\r\n")
    site.wait_for(lambda: len(sink.recipients()) == 10, what="the mail at smtp-sink")
    log = site.log_tail(400)
    assert "XTIDEPOST BATCH" not in log and "XBATCH" not in log
    assert sorted(sink.recipients()).count("other@remote.test") == 5
