"""qmail-style control flag files: hold routes by creating files.

Existing ip-up/ip-down scripts toggle a file and send SIGHUP; tidepost
keeps that habit.  The control directory is `SPOOL/control/`:

    holdremote       hold every on-demand route (qmail's holdremote patch)
    holdlocal        hold local delivery (the `local` route)
    hold.ROUTE       hold the route called ROUTE

The files act when they change (`FlagFiles.changes`): at start-up a file
that exists holds its route; on SIGHUP a file that appeared holds its
route, one that went away releases it, and a route no file's change names
keeps its state, so that a SIGHUP sent for another reason (newaliases,
logrotate) never releases a route held by `start_held` or `tidepost link
down`.  `tidepost link` keeps working beside the files; whichever acted
last decides.
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


class FlagFiles:
    """The flag files as last read; each reading says what changed since (module docstring)."""

    def __init__(self, config: Config):
        self._config = config
        self._last: dict[str, bool] = {}  # the first reading: every file present is new

    def changes(self) -> dict[str, bool]:
        """Routes whose files changed since the last reading, and whether they now hold them."""
        wanted = wanted_holds(self._config)
        changed = {route: held for route, held in wanted.items()
                   if held != self._last.get(route, False)}
        self._last = wanted
        return changed
