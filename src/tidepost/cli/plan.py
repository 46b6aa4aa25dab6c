"""`tidepost link plan ROUTE`: what a release of ROUTE would send now, before dialling.

Reads the spool only (queue, DNS cache, usage store), daemon or not, and
sends nothing anywhere:
- messages, recipients and bytes due on the route (one aggregate query,
  QueueBackend.pending_summary; routing/plan.py sums it), and the
  recipients that wait for a retry time whatever a release does;
- the bytes after compression, estimated on up to MAX_SAMPLES of those
  messages compressed as one stream: with zstd when the `zstandard` module
  is installed, otherwise with Python's zlib, labelled as the estimate of
  what a compressed tidepost-to-tidepost transfer could save (plain SMTP
  sends every byte as it is);
- the DNS names a release would have to look up (not valid in
  SPOOL/dns-cache.sqlite now): each a round trip before its first message;
- the seconds on the link at the route's `rate`, and the route's state
  (held, and a data cap reached this period).
"""

from __future__ import annotations

import json
import sys
import time
import zlib

from rich.console import Console

from tidepost.clock import SystemClock
from tidepost.config.schema import Config
from tidepost.errors import QueueError
from tidepost.queue.backend import QueueBackend, open_configured_queue
from tidepost.resolver.cache import CACHE_FILE, DnsCache
from tidepost.routing.plan import RoutePlan, plan_route, size_bounds
from tidepost.routing.routes import Router
from tidepost.sizes import human_bytes
from tidepost.smtp_client.mx import literal_address, parse_smarthost
from tidepost.usage.store import current_caps

MAX_SAMPLES = 64       # messages compressed for the estimate
MAX_DNS_DOMAINS = 500  # domains whose cache entries are checked


async def show_plan(config: Config, route: str, output: str) -> int:
    """Print the plan of `route`; 0."""
    router = Router(config)
    queue = open_configured_queue(config)
    try:
        bounds = size_bounds(router)
        plan = plan_route(router, route, await queue.pending_summary(time.time(), bounds),
                          bounds)
        bodies = await _samples(queue, plan)
        held = route in await _held(config, queue)
    finally:
        await queue.close()
    report = {"route": route, "held": held, "cap": _cap_reached(config, route),
              "messages": plan.messages, "recipients": plan.recipients,
              "bytes": plan.bytes, "waiting_for_retry": plan.waiting_recipients,
              **compression_estimate(bodies, plan.bytes),
              "dns_lookups": await names_to_resolve(config, router, route, plan),
              "dns_domains_checked": min(len(plan.domains), MAX_DNS_DOMAINS),
              "domains": len(plan.domains),
              **_timing(config, router, route, plan)}
    if output == "json":
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        _print(report)
    return 0


def compression_estimate(bodies: list[bytes], total: int) -> dict:
    """Bytes after compressing the messages as one stream, estimated on `bodies`."""
    raw = b"".join(bodies)
    if not raw:
        return {"compressed_bytes": 0, "compression": "nothing to compress", "samples": 0}
    try:
        import zstandard  # optional: the compressed transfer mode may bring it
        packed = zstandard.ZstdCompressor(level=3).compress(raw)
        how = "zstd level 3, one stream"
    except ImportError:
        packed = zlib.compress(raw, 6)
        how = ("zlib level 6, one stream: an estimate of what a compressed "
               "tidepost-to-tidepost transfer could save; plain SMTP sends it all")
    return {"compressed_bytes": round(total * len(packed) / len(raw)), "compression": how,
            "samples": len(bodies)}


async def names_to_resolve(config: Config, router: Router, route: str,
                           plan: RoutePlan) -> list[str]:
    """`NAME TYPE` of each lookup a release needs that the DNS cache cannot answer now."""
    cache = DnsCache(config.spool_path / CACHE_FILE, SystemClock())
    wanted: list[str] = []
    try:
        settings = router.by_name.get(route)
        if settings is not None and settings.transport == "smarthost":
            target = parse_smarthost(settings.smarthost)
            names = [target.host] if target.mx_lookup else []
            hosts = [] if target.mx_lookup else [target.host]
        else:
            names, hosts = plan.domains[:MAX_DNS_DOMAINS], []
        for name in names:
            hosts += await _mx_hosts(cache, name, wanted)
        for host in dict.fromkeys(hosts):
            if literal_address(host) is None:
                for rdtype in ("AAAA", "A"):
                    if await cache.get(host, rdtype) is None:
                        wanted.append(f"{host} {rdtype}")
    finally:
        await cache.close()
    return wanted


async def _mx_hosts(cache: DnsCache, domain: str, wanted: list[str]) -> list[str]:
    """The MX hosts of `domain` the cache knows (the domain itself for an implicit MX)."""
    if literal_address(domain):
        return []
    answer = await cache.get(domain, "MX")
    if answer is None:
        wanted.append(f"{domain} MX")   # and its hosts' addresses, once it is known
        return []
    if not answer.exists:
        return []                       # NXDOMAIN, cached: it bounces without a query
    if not answer.records:
        return [domain]                 # implicit MX
    hosts = [record.split()[-1].rstrip(".").lower() for record in answer.records]
    return [h for h in hosts if h not in ("", ".")]


async def _samples(queue: QueueBackend, plan: RoutePlan) -> list[bytes]:
    """Up to MAX_SAMPLES message bodies spread over the plan's groups."""
    ids = list(dict.fromkeys(plan.samples))
    step = max(1, len(ids) // MAX_SAMPLES)
    bodies = []
    for message_id in ids[::step][:MAX_SAMPLES]:
        try:
            bodies.append(await queue.load_body(message_id))
        except QueueError:
            continue  # delivered meanwhile
    return bodies


async def _held(config: Config, queue: QueueBackend) -> set[str]:
    """Routes held now: persisted states, else start_held."""
    states = await queue.holds()
    return {r.name for r in config.route
            if (states[r.name].held if r.name in states else r.start_held)}


def _cap_reached(config: Config, route: str) -> str:
    """What the route's data cap hold says, when it is at one now; else ''."""
    hold = current_caps(config.spool_path, time.time()).get(route)
    return hold.cause if hold else ""


def _timing(config: Config, router: Router, route: str, plan: RoutePlan) -> dict:
    """Seconds on the link at the route's rate, or why unknown."""
    settings = router.by_name.get(route)
    rate = settings.rate if settings is not None else 0.0
    seconds = plan.wire_seconds(rate)
    return {"rate_bits_per_second": rate,
            "seconds": round(seconds, 1) if seconds is not None else None}


def _print(report: dict) -> None:
    """The plan as a few lines for a person."""
    console = Console(highlight=False)
    state = "held" if report["held"] else "up"
    if report["cap"]:
        state += f", held at its {report['cap']}: only urgent mail goes"
    console.print(f"route {report['route']} ({state}): a release now would send")
    console.print(f"  {report['messages']} messages to {report['recipients']} recipients, "
                  f"{human_bytes(report['bytes'])}")
    if report["samples"]:
        share = report["compressed_bytes"] / report["bytes"] if report["bytes"] else 0
        console.print(f"  compressed about {human_bytes(report['compressed_bytes'])} "
                      f"({share:.1%}; {report['compression']}; {report['samples']} "
                      "messages sampled)")
    lookups = report["dns_lookups"]
    checked = "" if report["dns_domains_checked"] == report["domains"] else \
        f" ({report['dns_domains_checked']} of {report['domains']} domains checked)"
    console.print(f"  DNS: {len(lookups)} lookups not answered by the cache{checked}"
                  + (": " + ", ".join(lookups[:8]) + (" ..." if len(lookups) > 8 else "")
                     if lookups else ""))
    if report["seconds"] is None:
        console.print("  time on the link: unknown (set the route's `rate`)")
    else:
        console.print(f"  time on the link: about {_duration(report['seconds'])} at "
                      f"{report['rate_bits_per_second'] / 1000:g} kbit/s, plus a few "
                      "round trips")
    if report["waiting_for_retry"]:
        console.print(f"  {report['waiting_for_retry']} more recipients wait for their "
                      "retry time and would not go")


def _duration(seconds: float) -> str:
    """`42 s`, `12.5 min`, `3.2 h`."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
