"""Which folders an account can reach: tidepost keeps root rather than lose its own code."""

import os

from tidepost.accounts import Account, can_reach

NOBODY_SPECIAL = Account("tidepost-test-no-such-user", 54321, 54321, "/nonexistent")


def test_a_folder_closed_on_the_way_stops_the_account(tmp_path):
    outer = tmp_path / "outer"
    inner = outer / "lib"
    inner.mkdir(parents=True)
    for folder in (tmp_path, outer, inner):
        os.chmod(folder, 0o755)
    assert can_reach(NOBODY_SPECIAL, inner)
    os.chmod(outer, 0o700)
    assert not can_reach(NOBODY_SPECIAL, inner)
    assert not can_reach(NOBODY_SPECIAL, tmp_path / "missing")
