"""Address parsing at the edge."""

import pytest

from tidepost.address import Address, AddressError, domain_matches, parse_path


@pytest.mark.parametrize("text, expected", [
    ("<alice@Example.ORG>", Address("alice", "example.org")),
    ("<alice@example.org.>", Address("alice", "example.org")),
    ("<@relay.test,@other.test:bob@example.org>", Address("bob", "example.org")),
    ('<"a@b"@example.org>', Address('"a@b"', "example.org")),
    ("<user%remote.test@example.org>", Address("user%remote.test", "example.org")),
    ("<a@[127.0.0.1]>", Address("a", "[127.0.0.1]")),
    ("<a@[IPv6:::1]>", Address("a", "[IPv6:::1]")),
    ("<Postmaster>", Address("postmaster", "")),
])
def test_valid_paths(text, expected):
    assert parse_path(text) == expected


@pytest.mark.parametrize("text", [
    "<a@b@c.test>", "<a@>", "<@example.org>", "<a..b@example.org>", "<a@exa mple.org>",
    "<a@-bad.org>", "<a@[999.1.1.1]>", "<a@example..org>", "<noat>", "<a@b.test", "",
    "<" + "x" * 65 + "@example.org>",
])
def test_invalid_paths(text):
    with pytest.raises(AddressError):
        parse_path(text)


def test_null_sender_only_where_allowed():
    assert parse_path("<>", allow_null=True).is_null
    with pytest.raises(AddressError):
        parse_path("<>")


def test_routing_characters_are_visible():
    assert parse_path("<a%b@c.test>").has_routing_characters
    assert parse_path("<b!a@c.test>").has_routing_characters
    assert not parse_path("<a.b@c.test>").has_routing_characters


def test_domain_patterns():
    assert domain_matches("a.example.org", ".example.org")
    assert domain_matches("example.org", ".example.org")
    assert not domain_matches("badexample.org", ".example.org")
    assert domain_matches("x.test", "*")
    assert not domain_matches("sub.example.org", "example.org")
