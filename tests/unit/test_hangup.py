"""The hang-up signal: the drain watch, with probes set by the test and a real command."""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
from pathlib import Path

import pytest

from tidepost.config.schema import RouteConfig
from tidepost.manager.hangup import ODMR_LEASE, DrainWatch, Probes
from tidepost.testing.clock import FakeClock


class Activity:
    """Counters the probes read; the test changes them."""

    def __init__(self):
        self.due = self.connected = self.asking = self.inbound = 0

    def probes(self) -> Probes:
        return Probes(due=lambda r: self.due, connected=lambda r: self.connected,
                      asking=lambda r: self.asking, inbound=lambda: self.inbound)


def recorder(path: Path) -> str:
    """A hang-up command that appends its route and online seconds to `path`."""
    script = ("import os, sys; open(sys.argv[1], 'a').write("
              "os.environ['TIDEPOST_ROUTE'] + ' ' + os.environ['TIDEPOST_ONLINE_SECONDS'] + '\\n')")
    return shlex.join([sys.executable, "-c", script, str(path)])


def watch(tmp_path: Path, **route) -> tuple[DrainWatch, FakeClock, Activity]:
    clock = FakeClock()
    config = RouteConfig(name="uplink", hangup_grace=5.0, **route)
    drains = DrainWatch((config, RouteConfig(name="lan")), clock, tmp_path / "control")
    activity = Activity()
    drains.probes = activity.probes()
    return drains, clock, activity


def test_the_command_runs_once_after_everything_is_quiet_for_the_grace(tmp_path):
    ran = tmp_path / "ran"
    drains, clock, activity = watch(tmp_path, hangup_command=recorder(ran))

    async def main():
        drains.started("uplink", "release")
        activity.due, activity.asking = 3, 1
        assert not await drains.check("uplink")      # mail to send, ETRN unanswered
        clock.advance(10)
        activity.due = 0
        assert not await drains.check("uplink")      # the ETRN answer has not come
        activity.asking, activity.connected = 0, 1
        assert not await drains.check("uplink")      # a QUIT under way
        activity.connected = 0
        assert not await drains.check("uplink")      # quiet, but not for the grace yet
        clock.advance(3)
        activity.inbound = 1                         # the upstream connects back
        assert not await drains.check("uplink")
        activity.inbound = 0
        assert not await drains.check("uplink")
        clock.advance(4.9)
        assert not await drains.check("uplink")
        clock.advance(0.2)
        assert await drains.check("uplink")          # quiet for 5.1 s: now
        assert not await drains.check("uplink")      # once per release
    asyncio.run(main())
    assert ran.read_text() == "uplink 18\n"          # release 0 s, signal at 18.1 s
    assert [route for route, _ in drains.signals] == ["uplink"]


def test_routes_without_a_hangup_setting_are_not_watched_and_a_hold_ends_the_watch(tmp_path):
    ran = tmp_path / "ran"
    drains, clock, _ = watch(tmp_path, hangup_command=recorder(ran))

    async def main():
        drains.started("lan", "release")
        drains.started("uplink", "release")
        drains.stopped("uplink")                     # `link down` before the drain ended
        clock.advance(60)
        return [await drains.check(route) for route in ("lan", "uplink")]
    assert asyncio.run(main()) == [False, False]
    assert not ran.exists()


def test_an_odmr_session_keeps_the_link_up_until_it_ends_or_its_lease_runs_out(tmp_path):
    drains, clock, _ = watch(tmp_path, hangup_file="hangup.uplink")

    async def main():
        drains.odmr("uplink", "odmr-1", running=True)   # arms the watch by itself
        clock.advance(60)
        first = await drains.check("uplink")
        drains.odmr("uplink", "odmr-1", running=False)
        await drains.check("uplink")
        clock.advance(6)
        second = await drains.check("uplink")
        drains.odmr("uplink", "odmr-2", running=True)   # a session that never says it ended
        clock.advance(ODMR_LEASE + 1)
        await drains.check("uplink")
        clock.advance(6)
        return first, second, await drains.check("uplink")
    assert asyncio.run(main()) == (False, True, True)
    flag = (tmp_path / "control" / "hangup.uplink").read_text()
    assert flag.startswith("route=uplink time=")


def test_a_command_that_hangs_is_killed_and_the_saving_is_logged(tmp_path, caplog):
    drains, clock, activity = watch(tmp_path, hangup_command="sleep 30", hangup_timeout=1.0,
                                    idle_timeout=300.0)
    caplog.set_level(logging.INFO, logger="tidepost.manager.hangup")

    async def main():
        drains.started("uplink", "release")
        clock.advance(20)
        activity.due = 1
        await drains.check("uplink")   # the last delivery, at 20 s
        activity.due = 0
        await drains.check("uplink")   # quiet from here
        clock.advance(6)
        return await drains.check("uplink")
    assert asyncio.run(main())
    text = caplog.text
    assert "hangup_command 'sleep 30' killed after 1 s" in text
    # the dialer would have waited 300 s from the last activity (t=20 s); we hung up at 26 s
    assert "294 online seconds saved against the dialer's idle timer of 300 s" in text


def test_a_failing_command_is_logged_with_its_status_and_output(tmp_path, caplog):
    command = shlex.join([sys.executable, "-c", "print('no modem'); raise SystemExit(3)"])
    drains, clock, _ = watch(tmp_path, hangup_command=command)
    caplog.set_level(logging.INFO, logger="tidepost.manager.hangup")

    async def main():
        drains.started("uplink", "release")
        await drains.check("uplink")
        clock.advance(6)
        return await drains.check("uplink")
    assert asyncio.run(main())
    assert "exited 3: no modem" in caplog.text


@pytest.mark.parametrize("command", ["poff 'unbalanced", "   "])
def test_a_hangup_command_that_cannot_be_split_is_a_config_error(tmp_path, command):
    from tidepost.config.load import load_config
    from tidepost.errors import ConfigError
    path = tmp_path / "t.toml"
    path.write_text(f'[[route]]\nname = "uplink"\nhangup_command = "{command}"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "route[0].hangup_command" in str(error.value)
