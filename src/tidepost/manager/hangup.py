"""The hang-up signal: tell the dialer the moment a route's drain is complete.

A dial-up or metered link is usually dropped by the dialer's idle timer
(pppd `idle 300`), so every session pays that many seconds online after the
last byte.  A route with `hangup_command` or `hangup_file` is watched from
each release (or scheduled run) until its drain is complete:

- no mail due on the route waits in the scheduler (mail in backoff after a
  real failure, or held back by a data cap, does not count: it would not go),
- no job is queued or being delivered on it, and no connection is open on it
  (its last QUIT is done),
- every ETRN to its upstreams has been answered,
- no `tidepost odmr --route ROUTE` session is running (the upstream's mail
  for us is in), and no SMTP client from outside `smtp.relay_networks` is
  talking to us (what an upstream sends after ETRN arrives that way),

all of it without a break for `hangup_grace` seconds (an upstream connects
back a moment after answering ETRN; a hook may start `tidepost odmr` just
after `link up`).  Then, once per release: `hangup_command` runs (split
like a shell command line by shlex, but without a shell; environment
TIDEPOST_ROUTE and TIDEPOST_ONLINE_SECONDS; killed after `hangup_timeout`;
its exit status and first line of output are logged) and/or `hangup_file`
is written (relative paths are under SPOOL/control), and the log says how
many online seconds that saved against the dialer's `idle_timeout`.  A hold
of the route ends the watch without a signal.  Probes are wired by node.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidepost.clock import Clock
from tidepost.config.schema import RouteConfig

log = logging.getLogger("tidepost.manager.hangup")

CHECK_SECONDS = 0.5
ODMR_LEASE = 600.0   # seconds an ODMR session counts as running without saying it ended


@dataclass
class Probes:
    """How the watch sees a route's activity (each returns a count; 0 means quiet)."""

    due: Callable[[str], int] = lambda route: 0        # mail due, claimed or in delivery
    connected: Callable[[str], int] = lambda route: 0  # our connections open on it
    asking: Callable[[str], int] = lambda route: 0     # ETRN requests not yet answered
    inbound: Callable[[], int] = lambda: 0             # SMTP clients from outside


@dataclass
class _Watch:
    """One armed route: since when, and the last moment anything happened."""

    since: float
    cause: str
    last_activity: float
    quiet_since: float | None = None
    sessions: dict[str, float] = field(default_factory=dict)  # ODMR token -> lease end


class DrainWatch:
    """Watches released routes and signals the dialer once each drain is complete."""

    def __init__(self, routes: tuple[RouteConfig, ...], clock: Clock, control_dir: Path):
        self._routes = {r.name: r for r in routes if r.hangup_command or r.hangup_file}
        self._clock = clock
        self._control_dir = Path(control_dir)
        self.probes = Probes()
        self._armed: dict[str, _Watch] = {}
        self.signals: list[tuple[str, float]] = []  # (route, time) of each signal given

    def started(self, route: str, cause: str) -> None:
        """A release or scheduled run of `route` began: watch it (once per drain)."""
        if route in self._routes and route not in self._armed:
            now = self._clock.now()
            self._armed[route] = _Watch(now, cause, now)

    def stopped(self, route: str) -> None:
        """The route is held again: no signal for this drain."""
        self._armed.pop(route, None)

    def odmr(self, route: str, token: str, running: bool) -> None:
        """`tidepost odmr --route` started (or ended) session `token` on `route`."""
        watch = self._armed.get(route)
        if watch is None and running and route in self._routes:
            self.started(route, "ODMR")
            watch = self._armed[route]
        if watch is None:
            return
        if running:
            watch.sessions[token] = self._clock.now() + ODMR_LEASE
        else:
            watch.sessions.pop(token, None)
        watch.last_activity = self._clock.now()

    async def run(self, stopping: asyncio.Event) -> None:
        """Check the armed routes every CHECK_SECONDS until `stopping`."""
        while not stopping.is_set():
            await asyncio.sleep(CHECK_SECONDS)
            for route in list(self._armed):
                try:
                    await self.check(route)
                except Exception:  # noqa: BLE001 - the watch must go on
                    log.exception("route %s: checking the drain failed", route)

    async def check(self, route: str) -> bool:
        """Signal the dialer if `route`'s drain has been complete for its grace; True then."""
        watch = self._armed.get(route)
        if watch is None:
            return False
        now = self._clock.now()
        if self._active(route, watch, now):
            watch.last_activity, watch.quiet_since = now, None
            return False
        if watch.quiet_since is None:
            watch.quiet_since = now
        if now - watch.quiet_since < self._routes[route].hangup_grace:
            return False
        del self._armed[route]
        await self._signal(self._routes[route], watch, now)
        return True

    def _active(self, route: str, watch: _Watch, now: float) -> bool:
        """True while anything of the drain is still going on."""
        watch.sessions = {t: end for t, end in watch.sessions.items() if end > now}
        p = self.probes
        return bool(p.due(route) or p.connected(route) or p.asking(route)
                    or watch.sessions or p.inbound())

    async def _signal(self, route: RouteConfig, watch: _Watch, now: float) -> None:
        """Run the command and/or write the file; log what it saved."""
        online = now - watch.since
        self.signals.append((route.name, now))
        log.info("route %s: drain complete %.1f s after %s; signalling the dialer",
                 route.name, online, watch.cause)
        if route.hangup_file:
            self._write_flag(route, online, now)
        if route.hangup_command:
            await self._run_command(route, online)
        if route.idle_timeout:
            saved = max(watch.last_activity + route.idle_timeout - now, 0.0)
            log.info("route %s: %.0f online seconds saved against the dialer's idle timer "
                     "of %.0f s", route.name, saved, route.idle_timeout)

    def _write_flag(self, route: RouteConfig, online: float, now: float) -> None:
        """Write the flag file atomically (a dialer may watch it with inotify)."""
        path = Path(route.hangup_file)
        if not path.is_absolute():
            path = self._control_dir / path
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"route={route.name} time={now:.3f} online={online:.1f}\n")
            os.replace(tmp, path)
            log.info("route %s: wrote %s", route.name, path)
        except OSError as exc:
            log.error("route %s: cannot write the hang-up file %s: %s", route.name, path, exc)

    async def _run_command(self, route: RouteConfig, online: float) -> None:
        """Run hangup_command without a shell; log its exit status."""
        argv = shlex.split(route.hangup_command)
        env = {**os.environ, "TIDEPOST_ROUTE": route.name,
               "TIDEPOST_ONLINE_SECONDS": f"{online:.0f}"}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            log.error("route %s: cannot run hangup_command %r: %s", route.name,
                      route.hangup_command, exc)
            return
        try:
            output, _ = await asyncio.wait_for(process.communicate(), route.hangup_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            log.error("route %s: hangup_command %r killed after %g s", route.name,
                      route.hangup_command, route.hangup_timeout)
            return
        first = output.decode("utf-8", "replace").strip().splitlines()[:1]
        level = logging.INFO if process.returncode == 0 else logging.WARNING
        log.log(level, "route %s: hangup_command %r exited %d%s", route.name,
                route.hangup_command, process.returncode, f": {first[0]}" if first else "")
