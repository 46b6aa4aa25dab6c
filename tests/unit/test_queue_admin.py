"""Queue administration: show, hold, release, requeue, delete, and their log lines.

Against a real SQLite spool with no daemon (the control-socket notice then
finds nobody; tests/integration/test_queue_admin_daemon.py runs them beside one).
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from queue_spool import queue_spool  # noqa: F401 - the fixture
from tidepost.cli.queue_admin import admin_user, change, show_messages
from tidepost.cli.queue_filters import Filters
from tidepost.cli.queue_list import list_queue


def rows(spool) -> dict[str, dict]:
    """The listing as JSON, by recipient."""
    out = io.StringIO()
    asyncio.run(list_queue(spool.config, Filters(), as_json=True, out=out))
    return {row["recipient"]: row for row in map(json.loads, out.getvalue().splitlines())}


def run_change(spool, action: str, *queue_ids: str, **filters) -> int:
    """One admin change by queue id (or, with none, --all with `filters`)."""
    targets = Filters(queue_ids=queue_ids or None, **filters)
    return asyncio.run(change(spool.config, action, targets))


def test_the_log_names_who_ran_the_command_even_after_a_change_of_account(queue_spool, capsys):
    spool = queue_spool.fill()
    alice = spool.queue_ids["alice@a.lan.test"]
    assert asyncio.run(change(spool.config, "hold", Filters(queue_ids=(alice,)), "carol")) == 0
    assert f"{alice}: held by=carol, nrcpt=1" in capsys.readouterr().err


def test_hold_then_release_a_message_on_a_route_that_is_up(queue_spool, capsys):
    spool = queue_spool.fill()
    alice = spool.queue_ids["alice@a.lan.test"]
    assert run_change(spool, "hold", alice) == 0
    assert rows(spool)["alice@a.lan.test"]["state_text"] == "held (message)"
    out, log = capsys.readouterr()
    assert "held 1 recipient of 1 message" in out
    assert f" info admin: {alice}: held by={admin_user()}, nrcpt=1\n" in log  # the mail log
    before = time.time()
    assert run_change(spool, "release", alice) == 0
    alice_row = rows(spool)["alice@a.lan.test"]
    assert alice_row["state_text"] == "queued" and alice_row["next_try"] >= before
    assert f"{alice}: released by={admin_user()}, nrcpt=1" in capsys.readouterr().err


def test_release_of_mail_on_a_held_route_leaves_the_route_hold(queue_spool):
    spool = queue_spool.fill()
    dave = spool.queue_ids["dave@example.org"]
    run_change(spool, "hold", dave)
    run_change(spool, "release", dave)
    assert rows(spool)["dave@example.org"]["state_text"] == "held (route uplink)"


def test_requeue_makes_a_deferred_recipient_due_now_and_keeps_its_attempts(queue_spool):
    spool = queue_spool.fill()
    before = rows(spool)["bob@b.lan.test"]
    assert before["state"] == "retry" and before["attempts"] == 1
    assert run_change(spool, "requeue", spool.queue_ids["bob@b.lan.test"]) == 0
    after = rows(spool)["bob@b.lan.test"]
    assert after["state_text"] == "queued" and after["attempts"] == 1
    assert after["next_try"] < before["next_try"]


def test_delete_all_on_a_domain_deletes_those_recipients_only(queue_spool, capsys):
    spool = queue_spool.fill()
    assert run_change(spool, "delete", domain="example.org") == 0
    assert set(rows(spool)) == set(spool.queue_ids) - {"dave@example.org", "eve@example.org"}
    log = capsys.readouterr().err
    assert log.count(" deleted by=") == 2
    assert f"admin: {spool.queue_ids['dave@example.org']}: removed\n" in log


def test_delete_by_route_follows_the_router(queue_spool):
    spool = queue_spool.fill()
    run_change(spool, "delete", route="lan", shown=None)
    assert not [r for r in rows(spool).values() if r["route"] == "lan"]
    assert "dave@example.org" in rows(spool)


def test_unknown_and_unchanged_messages_are_reported(queue_spool, capsys):
    spool = queue_spool.fill()
    hank = spool.queue_ids["hank@d.lan.test"]  # in flight: a hold leaves it alone
    assert run_change(spool, "hold", hank, "NOSUCHID0000") == 1
    out, err = capsys.readouterr()
    assert "held 0 recipients of 0 messages" in out
    assert f"{hank}: no queued recipient to hold" in out
    assert "NOSUCHID0000: no such message" in err
    assert rows(spool)["hank@d.lan.test"]["state"] == "in-flight"


def test_show_prints_envelope_recipients_error_and_headers(queue_spool, capsys):
    spool = queue_spool.fill()
    bob = spool.queue_ids["bob@b.lan.test"]
    assert asyncio.run(show_messages(spool.config, [bob], body=False)) == 0
    out = capsys.readouterr().out
    assert f"queue id:   {bob}" in out and "sender:     <root@site.test>" in out
    assert "recipient:  <bob@b.lan.test>  route lan, retry " in out
    assert "last error: 4.4.1 connection refused by mx.b.lan.test" in out
    assert out.endswith("-- headers\nSubject: small\nX-Test: yes\n")
    assert asyncio.run(show_messages(spool.config, [bob], body=True)) == 0
    assert capsys.readouterr().out.endswith("-- message\nSubject: small\nX-Test: yes\n\nhello\n")
    assert asyncio.run(show_messages(spool.config, ["NOSUCHID0000"], body=False)) == 1


@pytest.mark.parametrize("argv", [["hold"], ["delete", "X", "--all"]])
def test_an_admin_change_wants_ids_or_all(queue_spool, argv, capsys):
    from tidepost.cli.main import main
    assert main(["queue", *argv, "-c", str(_config_file(queue_spool))]) == 64
    assert "name queue ids, or give --all" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["queue", "show"], ["queue", "--no-such-option"],
                                  ["no-such-command"], ["flush", "--route"]])
def test_a_usage_error_found_by_the_option_parser_exits_64(queue_spool, argv, capsys):
    from tidepost.cli.main import main
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "-c", str(_config_file(queue_spool))])
    assert stopped.value.code == 64  # EX_USAGE, as the README promises; argparse says 2
    assert "error:" in capsys.readouterr().err


def test_options_before_or_after_the_action_both_count(queue_spool, capsys):
    from tidepost.cli.main import main
    spool = queue_spool.fill()
    config = str(_config_file(spool))
    assert main(["queue", "--route", "lan", "--count", "-c", config]) == 0
    assert main(["queue", "list", "-c", config, "--route", "lan", "--count"]) == 0
    assert capsys.readouterr().out == "4\n4\n"


def _config_file(spool):
    """The spool's configuration as a file, for the command line."""
    from queue_spool import CONFIG
    path = spool.path / "tidepost.toml"
    path.write_text(CONFIG.format(spool=spool.path))
    return path


def test_sendmail_bp_prints_the_listing(queue_spool, capsys):
    from tidepost.cli import sendmail
    spool = queue_spool.fill()
    assert sendmail.run(["-bp", "-C", str(_config_file(spool))]) == 0
    out = capsys.readouterr().out
    assert "held (message)" in out and out.endswith("-- 8 messages, 8 recipients\n")


def test_show_into_a_pager_that_quits_early_ends_quietly(queue_spool):
    import subprocess
    import sys
    from pathlib import Path
    spool = queue_spool.fill()
    eve = next(queue_id for rcpt, queue_id in spool.queue_ids.items() if rcpt.startswith("eve@"))
    tidepost = Path(sys.executable).parent / "tidepost"
    # `tidepost queue show ID --body | head -1`: more than a pipe holds, read one line
    shown = subprocess.Popen([str(tidepost), "queue", "show", *[eve] * 200, "--body", "-c",
                              str(_config_file(spool))], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    shown.stdout.readline()
    shown.stdout.close()
    assert shown.wait(30) == 0
    assert b"Traceback" not in shown.stderr.read()
