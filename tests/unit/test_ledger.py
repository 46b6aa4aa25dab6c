"""The link ledger: appending, reading recent records, activations, rotation."""

import json

from tidepost.routing.ledger import LEDGER_FILE, Ledger, last_activations, read_ledger
from tidepost.testing.clock import FakeClock


def test_records_are_json_lines_read_back_per_route(tmp_path):
    clock = FakeClock(1000.0)
    ledger = Ledger(tmp_path / LEDGER_FILE, clock)
    ledger.record("uplink", "dns d.test MX", "Q1", "released: tidepost link up")
    clock.advance(1)
    ledger.record("uplink", "connect mx.d.test[192.0.2.1]:25", "Q1", "released: tidepost link up")
    ledger.record("backup", "dns e.test MX", "Q2", "retry")
    line = json.loads((tmp_path / LEDGER_FILE).read_text().splitlines()[0])
    assert line == {"time": 1000.0, "route": "uplink", "what": "dns d.test MX",
                    "queue_id": "Q1", "cause": "released: tidepost link up"}
    reader = read_ledger(tmp_path)
    assert [r.what for r in reader.recent("uplink", 5)] == [
        "dns d.test MX", "connect mx.d.test[192.0.2.1]:25"]
    assert [r.route for r in reader.recent(n=1)] == ["backup"]


def test_activations_start_after_an_idle_gap(tmp_path):
    clock = FakeClock(0.0)
    ledger = Ledger(tmp_path / LEDGER_FILE, clock)
    for cause, queue_ids in (("new mail", ["A"]), ("released: command", ["B", "C", "C"])):
        for queue_id in queue_ids:
            ledger.record("uplink", "dns x.test MX", queue_id, cause)
            clock.advance(10)
        clock.advance(500)
    bursts = ledger.activations("uplink")["uplink"]
    assert [(b.first.cause, b.records, len(b.queue_ids)) for b in bursts] == [
        ("new mail", 1, 1), ("released: command", 3, 2)]
    summary = last_activations(tmp_path, n=1)
    assert list(summary) == ["uplink"] and summary["uplink"][0]["cause"] == "released: command"
    assert summary["uplink"][0]["messages"] == 2


def test_full_ledger_rotates_and_both_generations_are_read(tmp_path):
    clock = FakeClock(0.0)
    ledger = Ledger(tmp_path / LEDGER_FILE, clock, max_bytes=400)
    for i in range(30):
        ledger.record("uplink", f"dns n{i}.test A")
        clock.advance(1)
    assert (tmp_path / (LEDGER_FILE + ".1")).exists()
    assert (tmp_path / LEDGER_FILE).stat().st_size < 400 + 200
    recent = ledger.recent("uplink", 100)
    assert recent[-1].what == "dns n29.test A"
    assert [r.time for r in recent] == sorted(r.time for r in recent)


def test_torn_lines_are_skipped(tmp_path):
    ledger = Ledger(tmp_path / LEDGER_FILE, FakeClock())
    ledger.record("uplink", "dns a.test MX")
    with open(tmp_path / LEDGER_FILE, "a") as f:
        f.write('{"time": 1, "route": "upl')
    assert len(ledger.recent()) == 1
