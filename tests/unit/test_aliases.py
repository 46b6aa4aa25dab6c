"""Local recipients: aliases file syntax, expansion, postmaster."""

import pytest

from tidepost.address import Address
from tidepost.config.load import parse_config
from tidepost.errors import ConfigError
from tidepost.submission.aliases import Aliases, parse_aliases

CONFIG = parse_config('hostname = "site.test"\n[local]\ndomains = ["site.test"]\n'
                      'users = ["alice", "bob"]\nsystem_users = false\n', "t")


def test_aliases_file_syntax_and_errors():
    aliases = parse_aliases("# comment\nstaff: alice,\n  bob\nroot: alice\n", "aliases")
    assert aliases == {"staff": ["alice", "bob"], "root": ["alice"]}
    with pytest.raises(ConfigError) as caught:
        parse_aliases("ok: alice\nbroken\nrun: |/bin/sh\n", "aliases")
    assert caught.value.problems == [
        "aliases:2: expected 'name: target, ...'",
        "aliases:3: run: program and file targets are not supported"]


def test_expansion_keeps_the_addressed_domain_and_stops_loops():
    aliases = Aliases(CONFIG, {"staff": ["alice", "ops"], "ops": ["bob", "staff"],
                               "out": ["carol@example.test"]})
    assert aliases.expand("Staff", "site.test") == [Address("alice", "site.test"),
                                                   Address("bob", "site.test"),
                                                   Address("staff", "site.test")]
    assert aliases.expand("out", "site.test") == [Address("carol", "example.test")]


def test_who_exists():
    aliases = Aliases(CONFIG, {"root": ["alice"]})
    assert aliases.exists("postmaster") and aliases.exists("POSTMASTER")
    assert aliases.exists("alice") and aliases.exists("root") and aliases.exists("alice+lists")
    assert not aliases.exists("mallory") and not aliases.exists("mallory+x")
    assert aliases.expand("alice+lists", "site.test") == [Address("alice", "site.test")]
    assert aliases.expand("postmaster", "") == [Address("postmaster", "site.test")]


def test_an_alias_defined_twice_names_both_lines():
    with pytest.raises(ConfigError) as caught:
        parse_aliases("root: alice\n# c\nRoot: bob\n", "aliases")
    assert caught.value.problems == ["aliases:3: root: defined again (first on line 1)"]
