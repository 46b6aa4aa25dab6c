"""Partly received batch messages on disk: within their space, never wrong."""

from __future__ import annotations

import os
import time

from tidepost.smtp_server.batch_partials import PartialStore

DAY = 86400.0


def store(tmp_path, space: int) -> PartialStore:
    return PartialStore(tmp_path / "batch-partial", DAY, space)


def keep(partials: PartialStore, tid: str, octets: bytes, start: int = 0) -> bool:
    kept = partials.append(tid, octets, start)
    partials.sync([tid])
    return kept


def age(partials: PartialStore, tid: str, seconds: float) -> None:
    path = partials.folder / tid
    then = time.time() - seconds
    os.utime(path, (then, then))


def used(partials: PartialStore) -> int:
    return sum(path.stat().st_size for path in partials.folder.iterdir())


def test_a_partial_is_kept_and_resumed(tmp_path):
    partials = store(tmp_path, 1000)
    assert keep(partials, "t1", b"a" * 300)
    assert keep(partials, "t1", b"b" * 200, start=300)
    assert partials.held("t1") == 500
    assert partials.load("t1", 500) == b"a" * 300 + b"b" * 200


def test_the_least_recently_written_others_make_room(tmp_path):
    partials = store(tmp_path, 1000)
    keep(partials, "old", b"o" * 400)
    keep(partials, "mid", b"m" * 400)
    age(partials, "old", 60)
    age(partials, "mid", 30)
    assert keep(partials, "new", b"n" * 500)
    assert partials.held("old") == 0           # the oldest went
    assert partials.held("mid") == 400         # enough room without it
    assert partials.held("new") == 500
    assert used(partials) <= 1000


def test_a_message_larger_than_the_space_is_not_kept(tmp_path):
    partials = store(tmp_path, 1000)
    keep(partials, "other", b"x" * 100)
    assert keep(partials, "big", b"b" * 800)
    assert not keep(partials, "big", b"b" * 400, start=800)  # 1,200 > 1,000
    assert partials.held("big") == 0           # XRESUME says 0: resent whole
    assert partials.held("other") == 100       # nobody evicted for a hopeless one


def test_a_forgotten_partial_is_not_made_again_with_a_hole(tmp_path):
    """Evicted (or expired) mid-message: later chunks must not recreate it from `start`."""
    partials = store(tmp_path, 1000)
    keep(partials, "live", b"l" * 400)
    age(partials, "live", 60)
    keep(partials, "rival", b"r" * 700)        # evicts "live" while its session runs
    assert partials.held("live") == 0
    assert not keep(partials, "live", b"l" * 100, start=400)
    assert partials.held("live") == 0          # not 500 octets, 400 of them zeros
    assert partials.load("live", 500) is None


def test_zero_space_keeps_nothing(tmp_path):
    partials = store(tmp_path, 0)
    assert not keep(partials, "t", b"x")
    assert partials.held("t") == 0


def test_partials_of_one_owner_are_invisible_to_another(tmp_path):
    # Transfer ids are the client's choice: a client must not resume (read into
    # its own envelope), probe or drop another client's partly received message.
    mine = PartialStore(tmp_path / "batch-partial", DAY, 1000, owner="auth:ship")
    theirs = PartialStore(tmp_path / "batch-partial", DAY, 1000, owner="ip:192.0.2.9")
    assert keep(mine, "t1", b"a" * 300)
    assert theirs.held("t1") == 0 and theirs.load("t1", 300) is None
    theirs.drop("t1")
    assert keep(theirs, "t1", b"b" * 600)   # no room made by deleting its own name
    assert mine.held("t1") == 300 and theirs.held("t1") == 600
    assert mine.load("t1", 300) == b"a" * 300
