"""Customer domains: the relay role's held domains, listed inline and in a file.

A relay accepts mail for its customers' domains from anyone, queues it on
the built-in route `customers` (held), and delivers a domain's mail only
when the customer asks (ETRN, ATRN).  `CustomerDomains` answers "is this a
customer domain?" with no I/O; `refresh()` re-reads the file when its
modification time or size changed (the daemon calls it at most once a second,
and on SIGHUP) and returns True when the list changed, so that the caller can
clear caches (Router.route_of).

Patterns: `example.org` matches that domain, `.example.org` the domain and
all its subdomains (as relay.domains).  The file has one pattern a line;
`#` starts a comment; blank lines are ignored.  A file that cannot be read
keeps the previous list (and is reported through `problem`), so a half-written
file never drops customers' mail into the wrong route.

In a cluster (`[queue] backend = "postgresql"`) the list of the whole
cluster is in the database (queue/directory.py; `tidepost customers`):
node_relay.py hands it over with `set_shared(patterns)` whenever it changes,
and the inline and file patterns of this node's configuration still count
(after the shared ones: the union of both).

Config keys read: relay.customer_domains, relay.customer_domains_file,
queue.backend.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tidepost.address import AddressError, normalise_domain
from tidepost.config.schema import Config

log = logging.getLogger("tidepost.routing.customers")


def parse_domains_text(text: str) -> tuple[tuple[str, ...], list[str]]:
    """Patterns from a customer-domains file, and a message per bad line."""
    patterns: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        try:
            patterns.append(normalise_pattern(line))
        except AddressError as exc:
            problems.append(f"line {number}: {line!r}: {exc}")
    return tuple(patterns), problems


def normalise_pattern(pattern: str) -> str:
    """`Example.ORG.` -> `example.org`; a leading dot (subdomains) is kept."""
    dot = "." if pattern.startswith(".") else ""
    domain = pattern[len(dot):]
    if domain in ("", "*"):
        raise AddressError("a customer domain must be a domain, not a wildcard")
    return dot + normalise_domain(domain)


class CustomerDomains:
    """The current list of customer domain patterns."""

    def __init__(self, config: Config):
        relay = config.relay
        self._inline = tuple(relay.customer_domains)
        self._path = Path(relay.customer_domains_file) if relay.customer_domains_file \
            else None
        self._from_file: tuple[str, ...] = ()
        self._sharing = config.queue.backend == "postgresql"
        self._shared: tuple[str, ...] = ()
        self._stamp: tuple[int, int] | None = None
        self.problem = ""
        self._reindex()
        self.refresh()

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every pattern: the cluster's, then this node's inline ones, then its file's."""
        return self._shared + self._inline + self._from_file

    @property
    def local_patterns(self) -> tuple[str, ...]:
        """The patterns of this node's own configuration (inline and file)."""
        return self._inline + self._from_file

    def __bool__(self) -> bool:
        return bool(self._inline or self._path or self._sharing)

    def set_shared(self, patterns: tuple[str, ...]) -> bool:
        """Take the cluster's list (already normalised); True when it changed."""
        patterns = tuple(patterns)
        if patterns == self._shared:
            return False
        self._shared = patterns
        self._reindex()
        log.info("customer domains of the cluster: %d domains", len(patterns))
        return True

    def matches(self, domain: str) -> bool:
        """True when `domain` (normalised) is a customer domain."""
        return self.pattern_for(domain) is not None

    def pattern_for(self, domain: str) -> str | None:
        """The first pattern matching `domain` (as domain_matches says), or None.

        Looked up by the domain and each of its parents, not pattern by
        pattern: a relay with thousands of customers routes as fast as one
        with ten.
        """
        keys = [domain, "." + domain] + [domain[i:] for i, c in enumerate(domain) if c == "."]
        found = [self._index[key] for key in keys if key in self._index]
        return min(found)[1] if found else None

    def _reindex(self) -> None:
        """Each pattern by itself, keeping the first of equal ones (list order wins)."""
        self._index: dict[str, tuple[int, str]] = {}
        for position, pattern in enumerate(self.patterns):
            self._index.setdefault(pattern, (position, pattern))

    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or `force`); True when the list changed."""
        if self._path is None:
            return False
        try:
            info = os.stat(self._path)
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp == self._stamp and not force:
                return False
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return self._keep(f"{self._path}: cannot read: {exc}")
        patterns, problems = parse_domains_text(text)
        self._stamp = stamp
        self.problem = "; ".join(f"{self._path}: {p}" for p in problems)
        if self.problem:
            log.warning("customer domains: ignoring bad lines: %s", self.problem)
        changed = patterns != self._from_file
        self._from_file = patterns
        self._reindex()
        if changed:
            log.info("customer domains file %s: %d domains", self._path, len(patterns))
        return changed

    def _keep(self, problem: str) -> bool:
        """Keep the previous list after a failed read; report once per problem."""
        if problem != self.problem:
            log.warning("customer domains: keeping the previous list: %s", problem)
        self.problem = problem
        return False
