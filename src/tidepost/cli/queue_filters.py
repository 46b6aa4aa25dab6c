"""The filters of `tidepost queue` and its admin commands: parsed once, run in the query.

`--route R`, `--state S` (repeatable: queued, retry, scheduled, held,
in-flight), `--domain D` (D and its subdomains), `--sender ADDRESS` (`<>`
for the null sender) and `--older-than DURATION` are parsed here into
`Filters`, then turned into one Selection (queue/selection.py) with the
help of the queue's current domains when a route decides (queue_view.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tidepost.address import AddressError, normalise_domain, parse_path
from tidepost.config.load import parse_duration
from tidepost.config.schema import Config
from tidepost.cli.queue_view import QueueView, Shown, selection_of
from tidepost.queue.backend import QueueBackend
from tidepost.queue.selection import Selection
from tidepost.routing.routes import Router


class UsageError(Exception):
    """A filter that cannot be understood; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    """What the admin asked for, parsed."""

    route: str | None = None
    shown: frozenset[Shown] | None = None
    domain: str | None = None
    sender: str | None = None
    older_than: float | None = None   # seconds
    queue_ids: tuple[str, ...] | None = None

    def is_everything(self) -> bool:
        """True when nothing is filtered."""
        return self == Filters()


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """--route, --state, --domain, --sender, --older-than."""
    parser.add_argument("--route", metavar="ROUTE", help="only recipients this route serves")
    parser.add_argument("--state", metavar="STATE", action="append",
                        help="only recipients in this state: "
                             f"{', '.join(s.value for s in Shown)} (repeatable)")
    parser.add_argument("--domain", metavar="DOMAIN",
                        help="only recipients at DOMAIN or its subdomains")
    parser.add_argument("--sender", metavar="ADDRESS",
                        help="only messages from ADDRESS (<> for the null sender)")
    parser.add_argument("--older-than", metavar="DURATION", dest="older_than",
                        help="only messages queued longer ago than DURATION (30m, 2h, 1d)")


def filters_from(args: argparse.Namespace, config: Config,
                 queue_ids: tuple[str, ...] | None = None) -> Filters:
    """Parse the filter options of `args`; UsageError names the bad one."""
    return Filters(_route(getattr(args, "route", None), config),
                   _states(getattr(args, "state", None)),
                   _domain(getattr(args, "domain", None)),
                   _sender(getattr(args, "sender", None)),
                   _duration(getattr(args, "older_than", None)), queue_ids)


def _route(name: str | None, config: Config) -> str | None:
    """A known route name."""
    names = Router(config).route_names()
    if name is not None and name not in names:
        raise UsageError(f"no route named {name!r} (routes: {', '.join(names)})")
    return name


def _states(values: list[str] | None) -> frozenset[Shown] | None:
    """--state values, repeated or comma-separated."""
    if not values:
        return None
    known = {s.value: s for s in Shown} | {"in_flight": Shown.IN_FLIGHT}
    wanted = [v.strip().lower() for value in values for v in value.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise UsageError(f"unknown state {unknown[0]!r} (states: "
                         f"{', '.join(s.value for s in Shown)})")
    return frozenset(known[v] for v in wanted)


def _domain(text: str | None) -> str | None:
    """A normalised domain."""
    if text is None:
        return None
    try:
        return normalise_domain(text.strip().lstrip("@."))
    except AddressError as exc:
        raise UsageError(f"--domain {text!r}: {exc}") from None


def _sender(text: str | None) -> str | None:
    """The sender as the queue stores it ("" for <>)."""
    if text is None:
        return None
    if text.strip() in ("", "<>"):
        return ""
    try:
        return str(parse_path(text))
    except AddressError as exc:
        raise UsageError(f"--sender {text!r}: {exc}") from None


def _duration(text: str | None) -> float | None:
    """Seconds."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None


async def read_view(queue: QueueBackend, config: Config) -> QueueView:
    """The routes, holds and schedules in force now."""
    return QueueView(config, Router(config), await queue.holds())


async def selection_for(queue: QueueBackend, view: QueueView, filters: Filters) -> Selection:
    """The Selection for `filters`; reads the queue's domains when a route decides."""
    tallies = []
    if view.tallies_needed(filters.shown, filters.route):
        tallies = await queue.tally(Selection(), "domain", view.size_bounds)
    conditions = view.conditions(set(filters.shown) if filters.shown else None, filters.route,
                                 tallies)
    return selection_of(view, conditions, queue_ids=filters.queue_ids, sender=filters.sender,
                        domain=filters.domain, older_than=filters.older_than)
