"""qmail-style control flag files: hold routes by creating files.

Existing ip-up/ip-down scripts toggle a file and send SIGHUP; tidepost
keeps that habit.  The control directory is `SPOOL/control/`:

    holdremote       hold every on-demand route (qmail's holdremote patch)
    holdlocal        hold local delivery (the `local` route)
    hold.ROUTE       hold the route called ROUTE

On SIGHUP the files are authoritative for the routes they can name: a
route whose file exists is held, one whose file is gone is released.  At
start-up a file can only add holds (a route held by `tidepost link down`
stays held even if no file names it).  `tidepost link` keeps working beside
the files; whichever acted last decides.
"""

from __future__ import annotations

from pathlib import Path

from tidepost.config.schema import Config
from tidepost.routing.routes import LOCAL_ROUTE


def control_dir(config: Config) -> Path:
    """The folder holding the flag files."""
    return config.spool_path / "control"


def wanted_holds(config: Config) -> dict[str, bool]:
    """Every route the files speak for, and whether the files hold it."""
    folder = control_dir(config)
    hold_remote = (folder / "holdremote").exists()
    wanted = {LOCAL_ROUTE: (folder / "holdlocal").exists()}
    for route in config.route:
        wanted[route.name] = (folder / f"hold.{route.name}").exists() or \
            (hold_remote and route.on_demand)
    return wanted
