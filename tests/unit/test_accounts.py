"""Which folders an account can reach: tidepost keeps root rather than lose its own code."""

import os
import shutil
import tempfile

from tidepost.accounts import Account, can_reach

NOBODY_SPECIAL = Account("tidepost-test-no-such-user", 54321, 54321, "/nonexistent")


def test_a_folder_closed_on_the_way_stops_the_account():
    base = tempfile.mkdtemp(dir="/var/tmp")  # pytest's own tmp folders are private
    try:
        inner = os.path.join(base, "outer", "lib")
        os.makedirs(inner)
        for folder in (base, os.path.dirname(inner), inner):
            os.chmod(folder, 0o755)
        assert can_reach(NOBODY_SPECIAL, inner)
        os.chmod(os.path.dirname(inner), 0o700)
        assert not can_reach(NOBODY_SPECIAL, inner)
        assert not can_reach(NOBODY_SPECIAL, os.path.join(base, "missing"))
    finally:
        shutil.rmtree(base)
