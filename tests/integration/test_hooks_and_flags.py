"""The shipped hook scripts and control flag files drive holds like `tidepost link`."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIDEPOST = shutil.which("tidepost") or str(Path(sys.executable).parent / "tidepost")


UPLINK_HELD = {"route": [{"name": "uplink", "domains": ["*"], "start_held": True}],
               "local": {"domains": ["site.test"], "users": ["alice"], "system_users": False}}


def route_state(config: Path, route: str) -> str:
    out = subprocess.run([TIDEPOST, "link", "status", "-c", str(config)], check=True,
                         capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.split()[:1] == [route])
    return line.split()[2]


def run_hook(script: str, config: Path, *args: str) -> None:
    env = {**os.environ, "TIDEPOST_CONFIG": str(config),
           "PATH": f"{Path(TIDEPOST).parent}:{os.environ['PATH']}"}
    subprocess.run([str(REPO / "contrib" / script), *args], check=True, env=env,
                   capture_output=True)


def test_ppp_hooks_release_and_hold_the_uplink(tidepost_node):
    config = tidepost_node(start=False, **UPLINK_HELD).config_path
    assert route_state(config, "uplink") == "held"
    run_hook("ppp/ip-up.d/tidepost", config, "ppp0", "/dev/ttyS0", "115200")
    assert route_state(config, "uplink") == "up"
    run_hook("ppp/ip-down.d/tidepost", config, "ppp0")
    assert route_state(config, "uplink") == "held"


def test_networkmanager_hook_follows_up_and_down(tidepost_node):
    config = tidepost_node(start=False, **UPLINK_HELD).config_path
    run_hook("NetworkManager/dispatcher.d/50-tidepost", config, "wwan0", "up")
    assert route_state(config, "uplink") == "up"
    run_hook("NetworkManager/dispatcher.d/50-tidepost", config, "wwan0", "dhcp4-change")
    assert route_state(config, "uplink") == "up"
    run_hook("NetworkManager/dispatcher.d/50-tidepost", config, "wwan0", "down")
    assert route_state(config, "uplink") == "held"


@pytest.fixture
def daemon(tidepost_node):
    node = tidepost_node(**UPLINK_HELD)
    return node.process, node.config_path, node.spool


def wait_state(config: Path, route: str, state: str) -> bool:
    for _ in range(50):
        if route_state(config, route) == state:
            return True
        time.sleep(0.1)
    return False


def test_sighup_with_flag_files_toggles_holds_like_link(daemon):
    proc, config, spool = daemon
    subprocess.run([TIDEPOST, "link", "up", "uplink", "-c", str(config)], check=True,
                   capture_output=True)
    assert route_state(config, "uplink") == "up"
    (spool / "control" / "holdremote").touch()
    proc.send_signal(signal.SIGHUP)
    assert wait_state(config, "uplink", "held")
    (spool / "control" / "holdremote").unlink()
    (spool / "control" / "holdlocal").touch()
    proc.send_signal(signal.SIGHUP)
    assert wait_state(config, "uplink", "up")
    assert wait_state(config, "local", "held")
    # Local mail now waits in the queue; removing holdlocal delivers it.
    subprocess.run([TIDEPOST, "sendmail", "-C", str(config), "alice"], input=b"Subject: x\n\nx\n",
                   check=True)
    time.sleep(0.6)
    assert not list((spool / "mail" / "alice" / "new").glob("*")) \
        if (spool / "mail" / "alice" / "new").exists() else True
    (spool / "control" / "holdlocal").unlink()
    proc.send_signal(signal.SIGHUP)
    assert wait_state(config, "local", "up")
    for _ in range(50):
        if (spool / "mail" / "alice" / "new").exists() and \
                list((spool / "mail" / "alice" / "new").iterdir()):
            break
        time.sleep(0.1)
    assert len(list((spool / "mail" / "alice" / "new").iterdir())) == 1


def test_a_second_daemon_on_the_same_spool_is_refused(daemon):
    proc, config, spool = daemon
    second = subprocess.run([TIDEPOST, "serve", "-c", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 75
    assert f"pid {proc.pid}" in second.stderr
    assert (spool / "control.sock").exists()  # the first daemon's socket is untouched


def test_sighup_without_flag_files_keeps_a_held_route_held(daemon):
    # newaliases, logrotate and `kill -HUP` re-read the files; a route held
    # by start_held or `tidepost link down` must not be released by that
    # when no flag file ever named it: only a file that goes away releases.
    proc, config, spool = daemon
    assert route_state(config, "uplink") == "held"  # start_held
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert route_state(config, "uplink") == "held"
    subprocess.run([TIDEPOST, "link", "up", "uplink", "-c", str(config)], check=True,
                   capture_output=True)
    subprocess.run([TIDEPOST, "link", "down", "uplink", "-c", str(config)], check=True,
                   capture_output=True)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert route_state(config, "uplink") == "held"
