"""A test DNS server: unbound serving a static `test.` zone (for tests and benches).

`unbound_config()` writes the configuration; callers start
`unbound -d -c FILE` themselves (in a namespace if they like).  Nothing
here is used by tidepost itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

UNBOUND = "/usr/sbin/unbound"


def unbound_config(folder: Path, records: Iterable[str], *, address: str = "127.0.0.1",
                   port: int = 53, allow: str = "127.0.0.0/8") -> Path:
    """Write folder/unbound.conf serving `records` at address:port to clients in `allow`."""
    data = "\n".join(f"    local-data: {json.dumps(record)}" for record in records)
    path = folder / "unbound.conf"
    path.write_text(f"""server:
    username: ""
    chroot: ""
    directory: "{folder}"
    do-daemonize: no
    use-syslog: no
    logfile: ""
    pidfile: ""
    verbosity: 1
    num-threads: 1
    interface: {address}@{port}
    port: {port}
    access-control: {allow} allow
    do-not-query-localhost: no
    do-ip6: no
    local-zone: "test." static
{data}
remote-control:
    control-enable: no
""")
    return path
