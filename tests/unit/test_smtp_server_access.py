"""AccessPolicy: who may send to what, without a server."""

from __future__ import annotations

import dataclasses

import pytest

from tidepost.address import domain_matches, parse_path
from tidepost.config.schema import Config, LocalConfig, RelayConfig, SmtpServerConfig
from tidepost.smtp_server import replies as S
from tidepost.smtp_server.access import AccessPolicy


class Directory:
    """Local domains local.example and [192.0.2.9]; user alice; routes for .example."""
    transfers = None  # this fake takes no XTIDEPOST transfers
    inflow = None     # and never paces intake

    def is_local_domain(self, domain: str) -> bool:
        """The two local domains, and the domainless postmaster."""
        return domain in ("", "local.example", "[192.0.2.9]")

    def local_user_exists(self, local_part: str) -> bool:
        """alice and postmaster."""
        return local_part.lower() in ("alice", "postmaster")

    def has_route(self, domain: str) -> bool:
        """Anything under .example."""
        return domain_matches(domain, ".example")


def policy(relay_domains=("customer.example", ".sub.example"),
           networks=("192.0.2.0/24", "2001:db8::/32")) -> AccessPolicy:
    """A policy over the Directory fake."""
    config = dataclasses.replace(
        Config(), smtp=SmtpServerConfig(relay_networks=networks),
        local=LocalConfig(domains=("local.example",)),
        relay=RelayConfig(domains=relay_domains))
    return AccessPolicy(config, Directory())


@pytest.mark.parametrize("ip, expected", [
    ("192.0.2.77", True), ("::ffff:192.0.2.77", True), ("2001:db8::5", True),
    ("198.51.100.1", False), ("", False), ("not-an-ip", False)])
def test_relay_networks(ip, expected):
    assert policy().may_relay(ip) is expected


def test_authenticated_and_trusted_may_relay():
    assert policy().may_relay("198.51.100.1", authenticated="alice")
    assert policy().may_relay("", trusted=True)


@pytest.mark.parametrize("path, outsider, insider", [
    ("<alice@local.example>", S.S250_RECIPIENT_OK, S.S250_RECIPIENT_OK),
    ("<bob@local.example>", S.S550_NO_SUCH_USER, S.S550_NO_SUCH_USER),
    ("<POSTMASTER>", S.S250_RECIPIENT_OK, S.S250_RECIPIENT_OK),
    ("<alice@[192.0.2.9]>", S.S250_RECIPIENT_OK, S.S250_RECIPIENT_OK),
    ("<alice@[192.0.2.10]>", S.S550_RELAY_DENIED, S.S550_NO_ROUTE),
    ("<x@Customer.Example.>", S.S250_RECIPIENT_OK, S.S250_RECIPIENT_OK),
    ("<x@deep.sub.example>", S.S250_RECIPIENT_OK, S.S250_RECIPIENT_OK),
    ("<x@other.example>", S.S550_RELAY_DENIED, S.S250_RECIPIENT_OK),
    ("<x@nowhere.test>", S.S550_RELAY_DENIED, S.S550_NO_ROUTE),
    ("<@local.example:x@other.example>", S.S550_RELAY_DENIED, S.S250_RECIPIENT_OK),
    ("<x%other.example@local.example>", S.S550_RELAY_DENIED, S.S550_NO_SUCH_USER),
    ("<other.example!x@customer.example>", S.S550_RELAY_DENIED, S.S250_RECIPIENT_OK),
])
def test_recipient_decisions(path, outsider, insider):
    rcpt = parse_path(path)
    assert policy().check_recipient(rcpt, may_relay=False) == outsider
    assert policy().check_recipient(rcpt, may_relay=True) == insider


def test_star_relay_domain_is_not_an_open_relay():
    rcpt = parse_path("<x@other.example>")
    assert policy(relay_domains=("*",)).check_recipient(rcpt, False) == S.S550_RELAY_DENIED
