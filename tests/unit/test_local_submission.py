"""Local submission rules (submission/local.py) and the maildrop's exactly-once pick-up.

The rules run on a real SQLite queue.  The pick-up test interrupts the
daemon at the dangerous moment, after the commit and before the file is
removed, and shows that the next pick-up recognises the file instead of
queueing it twice (its transfer key).  Files must belong to an ordinary
user, so that test needs root to give its file away.
"""

import asyncio
import os

import pytest

from tidepost.clock import SystemClock
from tidepost.cli.local_transport import drop_file
from tidepost.config.load import parse_config
from tidepost.control.pickup import Maildrop
from tidepost.queue.sqlite import SqliteQueue
from tidepost.routing.routes import Router
from tidepost.submission import local
from tidepost.submission.aliases import Aliases
from tidepost.submission.local import LocalRequest, LocalSubmitter, Submitter
from tidepost.submission.submit import Submission

CONFIG = """
hostname = "box.test"
[local]
domains = ["box.test"]
users = ["alice", "bob"]
system_users = false
[system]
trusted_users = ["admin"]
[[route]]
name = "uplink"
"""
MESSAGE = b"Subject: s\r\n\r\nbody\r\n"


@pytest.fixture
def parts(tmp_path):
    config = parse_config(f'spool = "{tmp_path}"\n' + CONFIG, "t")
    queue = SqliteQueue(tmp_path / "queue.sqlite")
    submission = Submission(config, queue, SystemClock(), Router(config), Aliases(config))
    yield config, queue, LocalSubmitter(config, submission)
    asyncio.run(queue.close())


def body_of(queue: SqliteQueue) -> bytes:
    rows = asyncio.run(queue.rows())
    assert len(rows) == 1, rows
    return asyncio.run(_first_body(queue))


async def _first_body(queue):
    entry = (await queue.walk())[0]
    return await queue.load_body(entry.message_id)


ALICE = Submitter(1001, "alice", trusted=False)


def test_an_untrusted_sender_keeps_their_own_address_and_the_request_is_recorded(parts):
    _, queue, submitter = parts
    result = asyncio.run(submitter.submit(LocalRequest(("bob",), MESSAGE,
                                                       sender="boss@box.test"), ALICE))
    assert result.code == local.EX_OK and result.queue_id
    row, = asyncio.run(queue.rows())
    assert (row.sender, row.recipient) == ("alice@box.test", "bob@box.test")
    body = body_of(queue)
    assert b"X-Authentication-Warning: box.test: alice set sender to boss@box.test " \
           b"using -f\r\n" in body
    assert b"(tidepost, from userid alice uid 1001)" in body


def test_trusted_users_and_own_addresses_may_set_the_sender(parts):
    _, queue, submitter = parts
    admin = Submitter(1002, "admin", trusted=submitter.is_trusted("admin", 1002, 999))
    asyncio.run(submitter.submit(LocalRequest(("bob",), MESSAGE, sender=""), admin))
    asyncio.run(submitter.submit(LocalRequest(("bob",), MESSAGE,
                                              sender="alice@box.test"), ALICE))
    senders = sorted(row.sender for row in asyncio.run(queue.rows()))
    assert senders == ["", "alice@box.test"]


def test_received_fields_claiming_this_host_are_renamed(parts):
    _, queue, submitter = parts
    forged = b"Received: from evil by box.test;\r\n Mon, 1 Jan 2024\r\n" \
             b"Received: from a by elsewhere.test; x\r\n" + MESSAGE
    asyncio.run(submitter.submit(LocalRequest(("bob",), forged), ALICE))
    body = body_of(queue)
    assert b"\r\nX-Untrusted-Received: from evil by box.test;\r\n Mon" in body
    assert b"\r\nReceived: from a by elsewhere.test; x\r\n" in body


def test_refusals_name_their_exit_codes_and_queue_nothing(parts):
    _, queue, submitter = parts
    cases = [(LocalRequest(("nobody",), MESSAGE), local.EX_NOUSER),
             (LocalRequest(("bad address@@x",), MESSAGE), local.EX_DATAERR),
             (LocalRequest((), MESSAGE), local.EX_USAGE),
             (LocalRequest(("bob",), b"x" * (26 * 1024 * 1024)), local.EX_DATAERR)]
    for request, code in cases:
        assert asyncio.run(submitter.submit(request, ALICE)).code == code
    assert asyncio.run(queue.rows()) == []


def test_the_wire_format_round_trips_and_refuses_what_is_malformed():
    request = LocalRequest(("bob", "carol@x.test"), MESSAGE, True, "a@b.test", "A B")
    assert local.decode(request.encode()) == request
    for broken in (b"hello", local.MAGIC + b"{}\n", local.MAGIC + b'{"recipients": [1]}\n',
                   local.MAGIC + b'{"recipients": [], "size": 5}\nabc',
                   local.MAGIC + b"x" * (local.MAX_HEADER + 10)):
        with pytest.raises(local.RequestError):
            local.decode(broken)


def test_the_dsn_request_of_sendmail_is_queued_for_every_recipient(parts):
    _, queue, submitter = parts
    request = LocalRequest(("bob", "alice"), MESSAGE, notify="SUCCESS", ret="FULL",
                           envid="job 12")
    assert local.decode(request.encode()) == request
    assert asyncio.run(submitter.submit(request, ALICE)).code == local.EX_OK

    async def claimed():
        entries = await queue.walk()
        return (await queue.claim([e.recipient_id for e in entries], "t:1:1", 60,
                                  2**40)).claimed
    [(info, recipients)] = asyncio.run(claimed())
    assert (info.ret, info.envid) == ("FULL", "job 12")
    assert [r.dsn.notify for r in recipients] == ["SUCCESS", "SUCCESS"]


def test_a_bad_dsn_request_in_a_maildrop_file_is_refused(parts):
    _, queue, submitter = parts
    for request in (LocalRequest(("bob",), MESSAGE, notify="NEVER,SUCCESS"),
                    LocalRequest(("bob",), MESSAGE, ret="BODY"),
                    LocalRequest(("bob",), MESSAGE, envid="a\r\nBcc: x")):
        assert asyncio.run(submitter.submit(request, ALICE)).code == local.EX_USAGE
    assert asyncio.run(queue.rows()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to a user")
def test_a_pick_up_interrupted_after_the_commit_does_not_queue_twice(parts, tmp_path):
    _, queue, submitter = parts
    folder = tmp_path / "maildrop"
    folder.mkdir()
    name = drop_file(folder, LocalRequest(("bob",), MESSAGE).encode())
    os.chown(folder / name, 54321, 54321)
    maildrop = Maildrop(folder, submitter, 10_000_000)
    real_remove = maildrop._remove

    def killed(file_name: str, why: str) -> None:
        if not why:  # the unlink after the commit: the daemon dies here
            raise SystemExit("killed")
        real_remove(file_name, why)

    maildrop._remove = killed
    with pytest.raises(SystemExit):
        asyncio.run(maildrop._take(name))
    assert (folder / name).exists() and len(asyncio.run(queue.rows())) == 1
    maildrop._remove = real_remove
    assert asyncio.run(Maildrop(folder, submitter, 10_000_000).pick_up()) == 1
    assert not (folder / name).exists()
    assert len(asyncio.run(queue.rows())) == 1  # recognised, not queued again


def test_a_recipient_argument_may_be_an_address_list_as_postfix_reads_it(parts):
    # `sendmail "alice, bob"` and `sendmail "Bob <bob@box.test>"` (scripts, PHP's
    # mail()) work with Postfix's and Sendmail's sendmail; they were refused 65.
    _, queue, submitter = parts
    request = LocalRequest(("alice, bob", "Bob Smith <bob@box.test>"), MESSAGE)
    assert asyncio.run(submitter.submit(request, ALICE)).code == local.EX_OK
    assert sorted(row.recipient for row in asyncio.run(queue.rows())) == \
        ["alice@box.test", "bob@box.test"]
    for bad in ("foo bar", "alice, <>", "alice, foo bar"):  # nothing guessed from garbage
        assert asyncio.run(submitter.submit(LocalRequest((bad,), MESSAGE), ALICE)).code == \
            local.EX_DATAERR, bad
