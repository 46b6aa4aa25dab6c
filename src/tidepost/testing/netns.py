"""A site and its ISP in two network namespaces, joined by the emulated link.

For the tests that count what crosses the uplink (tests/integration/
test_netns_*.py): `emulated_link(prefix, ifname, site_address, isp_address)`
makes namespaces PREFIX-site-TAG and PREFIX-isp-TAG, runs a LinkEmulator
(linkemu.py) between them on a /30, IPv4 only, the site's default route
over the link, and removes everything when the block ends.  Needs root,
`ip` and /dev/net/tun (`unavailable()` says why not).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

from tidepost.testing.linkemu import LinkEmulator


def unavailable() -> str | None:
    """Why namespaces with a TUN link cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("ip") or not os.path.exists("/dev/net/tun"):
        return "needs `ip` and /dev/net/tun"
    return None


def ip(*args: str) -> None:
    """Run `ip ARGS`; CalledProcessError on failure."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def emulated_link(prefix: str, ifname: str, site_address: str, isp_address: str,
                  delay: float = 0.02, rate: int = 1_000_000,
                  ) -> Iterator[tuple[str, str, LinkEmulator]]:
    """(site namespace, isp namespace, emulator), for the duration of the block."""
    tag = uuid.uuid4().hex[:6]
    site, isp = f"{prefix}-site-{tag}", f"{prefix}-isp-{tag}"
    ip("netns", "add", site)
    ip("netns", "add", isp)
    emulator = None
    try:
        emulator = LinkEmulator(site, isp, ifname=ifname, delay=delay, rate=rate).start()
        for name, mine in ((site, site_address), (isp, isp_address)):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                            f"net.ipv6.conf.{ifname}.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "addr", "add", f"{mine}/30", "dev", ifname)
            ip("-n", name, "link", "set", ifname, "up")
        ip("-n", site, "route", "add", "default", "dev", ifname)  # everything else: uplink
        yield site, isp, emulator
    finally:
        if emulator is not None:
            emulator.close()
        for name in (site, isp):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
