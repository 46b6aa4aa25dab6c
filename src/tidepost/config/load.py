"""Read a TOML file into a `Config`, reporting every problem with file:line.

Unknown keys, wrong types, values out of bounds and unknown choices are all
errors: a mistyped key that silently falls back to a default is how mail gets
lost.  All problems are collected and raised together as one ConfigError, each
line of the form `FILE:LINE: KEY: reason`.

Durations accept seconds or a number with a unit (`90s`, `15m`, `4h`, `5d`);
sizes accept bytes or `k`, `M`, `G` suffixes (powers of 1024); rates accept
bits per second or `k`, `M`, `G` suffixes (powers of 1000, as links are sold).
Numbers must be finite: TOML's `nan` and `inf` (and a duration too long for
a float) would pass every bound, since they compare false with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import shlex
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from tidepost.address import AddressError, normalise_domain
from tidepost.config.schema import CUSTOMERS_ROUTE, Config, RelayConfig, RouteConfig
from tidepost.errors import ConfigError
from tidepost.config.windows import ScheduleError, parse_rule

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*\Z")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bit/s|bps|b/s)?\s*\Z")
_RATE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*=")
_LISTEN = re.compile(r"(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}")
_SMARTHOST = re.compile(r"(\[[^\]\s]+\]|[A-Za-z0-9.\-]+)(:\d{1,5})?")

DEFAULT_ROUTE = RouteConfig(name="uplink", domains=("*",), on_demand=True, start_held=True)
# Customer domains' mail: held, delivered to each domain's MX when the customer asks.
# It matches no domain by pattern; the Router sends customer domains to it.
CUSTOMERS = RouteConfig(name=CUSTOMERS_ROUTE, domains=(), transport="mx", on_demand=False,
                        start_held=True)


SYSTEM_CONFIG = Path("/etc/tidepost/tidepost.toml")
DEFAULT_CONFIG = ("$TIDEPOST_CONFIG, else /etc/tidepost/tidepost.toml when it exists, "
                  "else the embedded default")
CONFIG_ORDER = f"-c/-C CONFIG, else {DEFAULT_CONFIG}"


def find_config_path(explicit: str | None) -> Path | None:
    """The config file every command reads (CONFIG_ORDER); None means embedded."""
    chosen = explicit or os.environ.get("TIDEPOST_CONFIG")
    if chosen:
        return Path(chosen)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load_config(path: Path | None) -> Config:
    """Load and validate `path`, or the embedded default when None."""
    if path is None:
        text = resources.files("tidepost.config").joinpath("default.toml").read_text()
        return parse_config(text, "<embedded default>")
    return parse_config(read_config_text(path), str(path))


def parse_config(text: str, source: str) -> Config:
    """Parse TOML text into a Config or raise ConfigError listing every problem."""
    config, problems = check_config(text, source)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def check_config(text: str, source: str) -> tuple[Config | None, list[str]]:
    """Every problem of a config text, and the Config made of what was valid.

    Cross-field checks run on what did parse, so that one pass reports every
    problem (a bad value is left at its default and checked no further).
    The Config is None only when the text is not TOML at all.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [_syntax_problem(source, exc)]
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        return None, [f"{source}: TOML nested too deeply"]
    builder = _Builder(source, _key_lines(text))
    config = builder.build(Config, data, "")
    config = _finish(config, source, builder)
    return config, sorted(builder.problems, key=_line_number)


def _line_number(problem: str) -> int:
    """The LINE of `FILE:LINE: ...` (0 when the problem names no line)."""
    found = re.match(r"[^:]*:(\d+):", problem)
    return int(found.group(1)) if found else 0


def read_config_text(path: Path) -> str:
    """The text of a config file; ConfigError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None


def _syntax_problem(source: str, error: tomllib.TOMLDecodeError) -> str:
    """`FILE:LINE: TOML syntax error: reason` from tomllib's message."""
    found = re.search(r"\(at line (\d+), column \d+\)", str(error))
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error))
    where = f"{source}:{found.group(1)}" if found else source
    return f"{where}: TOML syntax error: {reason}"


def _finish(config: Config, source: str, builder: _Builder) -> Config:
    """Cross-field checks and defaults that depend on several keys."""
    routes = config.route or (DEFAULT_ROUTE,)
    _check_routes(routes, builder)
    for key, entries in (("smtp.listen", config.smtp.listen),
                         ("relay.odmr_listen", config.relay.odmr_listen)):
        for index, entry in enumerate(entries):
            if not _LISTEN.fullmatch(entry) or int(entry.rpartition(":")[2]) > 65535:
                builder.error(f"{key}[{index}]", f"{entry!r} is not HOST:PORT "
                              "([v6 address]:PORT, *:PORT for all addresses)")
    local_domains = _normalised(config.local.domains, "local.domains", builder)
    relay_domains = _normalised(config.relay.domains, "relay.domains", builder)
    if "*" in config.relay.domains:
        builder.error("relay.domains", "'*' would make an open relay; use smtp.relay_networks")
    for index, network in enumerate(config.smtp.relay_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            builder.error(f"smtp.relay_networks[{index}]", f"{network!r} is not a network")
    smtp = config.smtp
    if smtp.reserved_connections >= smtp.max_connections:
        builder.error("smtp.reserved_connections",
                      f"{smtp.reserved_connections} leaves no connection for other clients "
                      f"(smtp.max_connections is {smtp.max_connections})")
    if config.queue.backend == "postgresql" and not config.queue.dsn:
        builder.error("queue.dsn", "backend postgresql needs the database "
                      "(postgresql://user@host:port/database)")
    relay = _relay(config.relay, builder)
    if relay.customer_domains or relay.customer_domains_file \
            or config.queue.backend == "postgresql":  # a cluster's list is in its database
        routes = (*routes, CUSTOMERS)
    return dataclasses.replace(
        config, route=tuple(routes), source=source,
        local=dataclasses.replace(config.local, domains=local_domains),
        relay=dataclasses.replace(relay, domains=relay_domains))


def _check_routes(routes: tuple[RouteConfig, ...], builder: _Builder) -> None:
    """Names, smarthosts, schedules, and routes that an earlier one hides."""
    names = [r.name for r in routes]
    for index, route in enumerate(routes):
        where = f"route[{index}]"
        if not route.name or not re.fullmatch(r"[A-Za-z0-9_\-]+", route.name):
            builder.error(f"{where}.name", "a route needs a name of letters, digits, - or _")
        elif names.count(route.name) > 1 or route.name in ("local", CUSTOMERS_ROUTE):
            builder.error(f"{where}.name", f"route name {route.name!r} is taken")
        if route.transport == "smarthost" and not route.smarthost:
            builder.error(f"{where}.smarthost", "transport smarthost needs a smarthost")
        elif route.smarthost and not _SMARTHOST.fullmatch(route.smarthost):
            builder.error(f"{where}.smarthost", f"{route.smarthost!r} is not HOST[:PORT] "
                          "or [HOST]:PORT")
        for number, rule in enumerate(route.schedule):
            try:
                parse_rule(rule)
            except ScheduleError as exc:
                builder.error(f"{where}.schedule[{number}]", str(exc))
        if route.hangup_command:
            try:
                if not shlex.split(route.hangup_command):
                    raise ValueError("nothing to run")
            except ValueError as exc:
                builder.error(f"{where}.hangup_command", f"{route.hangup_command!r}: {exc}")
        _check_shadowed(routes, index, builder)


def _check_shadowed(routes: tuple[RouteConfig, ...], index: int, builder: _Builder) -> None:
    """An error when every domain of routes[index] is taken by an earlier route.

    An earlier route with max_message_size lets large messages fall through,
    so only earlier routes without a size limit can hide a later one.
    """
    route = routes[index]
    earlier = [r for r in routes[:index] if not r.max_message_size]
    hider = None
    for pattern in route.domains:
        hider = next((r for r in earlier if any(_covers(p, pattern) for p in r.domains)), None)
        if hider is None:
            return
    if hider is not None:
        builder.error(f"route[{index}].domains", f"route {route.name!r} can never be used: "
                      f"route {hider.name!r} before it already takes "
                      f"{', '.join(route.domains)}")


def _covers(earlier: str, pattern: str) -> bool:
    """True when every domain `pattern` matches is matched by `earlier` (first wins)."""
    if earlier == "*":
        return True
    if pattern == "*":
        return False
    if earlier.startswith("."):
        bare = pattern.lstrip(".")
        return bare == earlier[1:] or bare.endswith(earlier)
    return earlier == pattern


def _relay(relay: RelayConfig, builder: _Builder) -> RelayConfig:
    """Check the relay role's keys; customer domains normalised."""
    if any(d.strip(".") in ("", "*") for d in relay.customer_domains):
        builder.error("relay.customer_domains", "'*' would hold everyone's mail; list domains")
    for index, network in enumerate(relay.etrn_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            builder.error(f"relay.etrn_networks[{index}]", f"{network!r} is not a network")
    customers = _normalised(relay.customer_domains, "relay.customer_domains", builder)
    return dataclasses.replace(relay, customer_domains=customers)


def _normalised(domains: tuple[str, ...], key: str, builder: _Builder) -> tuple[str, ...]:
    """Domains in the form addresses are parsed into (lower case, no trailing dot)."""
    out = []
    for index, domain in enumerate(domains):
        leading = "." if domain.startswith(".") else ""
        try:
            out.append(leading + normalise_domain(domain[len(leading):]))
        except AddressError as exc:
            if domain != "*":
                builder.error(f"{key}[{index}]", str(exc))
    return tuple(out)


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (route[0].name) to the line they are set on."""
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                name = f"{name}[{counts[name]}]"
            table = name
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = f"{table}.{key.group(1)}" if table else key.group(1)
            lines.setdefault(path, number)
    return lines


class _Builder:
    """Builds dataclasses from TOML tables, collecting problems as it goes."""

    def __init__(self, source: str, lines: dict[str, int]):
        self.source = source
        self.lines = lines
        self.problems: list[str] = []
        self._reported: set[str] = set()

    def error(self, path: str, reason: str) -> None:
        """Record one problem with its file and line (one per key: the first found)."""
        if path in self._reported:
            return
        self._reported.add(path)
        line = self._line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append(f"{where}: {path}: {reason}")

    def _line_of(self, path: str) -> int | None:
        """The line of `path`, or of the closest enclosing table."""
        while path:
            if path in self.lines:
                return self.lines[path]
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
            if parent == path:
                return None
            path = parent
        return None

    def build(self, cls: type, data: Any, prefix: str) -> Any:
        """Build one dataclass instance from a TOML table."""
        if not isinstance(data, dict):
            self.error(prefix, "expected a table")
            return cls()
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in fields:
                self.error(path, "unknown key")
                continue
            converted = self.convert(hints[key], fields[key].metadata, value, path)
            if converted is not _INVALID:
                values[key] = converted
        return cls(**values)

    def convert(self, hint: Any, metadata: Any, value: Any, path: str) -> Any:
        """Convert one TOML value to the field's type, checking bounds."""
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)
        if origin is tuple:
            return self._convert_tuple(typing.get_args(hint)[0], metadata, value, path)
        kind = metadata.get("kind", "")
        if kind == "duration":
            value = self._parse_unit(value, _DURATION, _DURATION_UNITS, path, "a duration")
        elif kind == "size":
            value = self._parse_unit(value, _SIZE, _SIZE_UNITS, path, "a size")
        elif kind == "rate":
            value = self._parse_unit(value, _RATE, _RATE_UNITS, path, "a rate")
        if value is _INVALID:
            return _INVALID
        return self._check_scalar(hint, metadata, value, path)

    def _convert_tuple(self, item: Any, metadata: Any, value: Any, path: str) -> Any:
        """Convert a TOML array (or a single value) to a tuple of `item`."""
        if not isinstance(value, list):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            self.error(path, "expected a list")
            return _INVALID
        out = [self.convert(item, metadata, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return _INVALID if _INVALID in out else tuple(out)

    def _parse_unit(self, value: Any, pattern: re.Pattern, units: dict, path: str,
                    what: str) -> Any:
        """Turn `15m` or `10M` into a number, or record an error."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        match = pattern.match(value) if isinstance(value, str) else None
        if not match:
            self.error(path, f"{value!r} is not {what}")
            return _INVALID
        return float(match.group(1)) * units[match.group(2).lower()]

    def _check_scalar(self, hint: Any, metadata: Any, value: Any, path: str) -> Any:
        """Check type, bounds and choices of a scalar value."""
        expected = {str: str, bool: bool, int: int, float: (int, float)}.get(hint, object)
        if isinstance(value, bool) and hint is not bool:
            self.error(path, f"expected {hint.__name__}, got a boolean")
            return _INVALID
        if not isinstance(value, expected):
            if hint is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.error(path, f"expected {getattr(hint, '__name__', hint)}, "
                           f"got {type(value).__name__}")
                return _INVALID
        if hint is float:
            try:
                value = float(value)  # an int too large for a float: OverflowError
            except OverflowError:
                value = math.inf
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"{value} is not a finite number")
            return _INVALID
        low, high = metadata.get("low"), metadata.get("high")
        if low is not None and value < low:
            self.error(path, f"{value} is below the minimum {low}")
            return _INVALID
        if high is not None and value > high:
            self.error(path, f"{value} is above the maximum {high}")
            return _INVALID
        choices = metadata.get("choices") or ()
        if choices and value not in choices:
            self.error(path, f"{value!r} is not one of {', '.join(choices)}")
            return _INVALID
        return value


_INVALID = types.SimpleNamespace()


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `4h`, `5d`, `1w` or plain seconds as seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (90s, 15m, 4h, 5d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
