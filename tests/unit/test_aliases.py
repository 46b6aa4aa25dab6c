"""Local recipients: aliases file syntax, expansion, postmaster."""

import dataclasses

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


def test_targets_that_are_no_address_are_refused_at_load():
    # Found by fuzzing: such a target used to vanish at expansion (the alias
    # expanded to nobody), and a NUL in one crashed the system-user lookup.
    text = 'team: alice, carol@\nnul: x+\0y\nsp: a b\nok: "a b", bob@far.test\n'
    with pytest.raises(ConfigError) as caught:
        parse_aliases(text, "aliases")
    assert caught.value.problems == [
        "aliases:1: team: 'carol@' is neither a local name nor an address",
        "aliases:2: nul: 'x+\\x00y' is neither a local name nor an address",
        "aliases:3: sp: 'a b' is neither a local name nor an address"]
    system = dataclasses.replace(CONFIG, local=dataclasses.replace(CONFIG.local,
                                                                   system_users=True))
    assert not Aliases(system, {}).exists("x+\0y")


def test_a_leading_plus_is_no_detail():
    # Found by fuzzing: `+alice` lost its whole local part (Address("", ...)),
    # and `r.+x` became the invalid `r.`.
    aliases = Aliases(CONFIG, {"team": ["+alice", "r.+x"]})
    assert aliases.expand("team", "site.test") == [Address("+alice", "site.test"),
                                                   Address("r.+x", "site.test")]
    assert not aliases.exists("+alice")


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


def test_postmaster_without_an_alias_or_account_reaches_root_on_a_real_machine():
    # With Maildirs in {home}/Maildir the mailbox `postmaster` (no account,
    # no home) could never be written: its mail was deferred for days, then
    # bounced.  RFC 5321 4.5.1: postmaster must be deliverable.
    system = dataclasses.replace(CONFIG, local=dataclasses.replace(CONFIG.local,
                                                                   system_users=True))
    assert Aliases(system, {}).expand("PostMaster", "") == [Address("root", "site.test")]
    assert Aliases(system, {"root": ["alice"]}).expand("postmaster", "site.test") == \
        [Address("alice", "site.test")]
    assert Aliases(system, {"postmaster": ["bob"]}).expand("postmaster", "") == \
        [Address("bob", "site.test")]


def test_an_alias_defined_twice_names_both_lines():
    with pytest.raises(ConfigError) as caught:
        parse_aliases("root: alice\n# c\nRoot: bob\n", "aliases")
    assert caught.value.problems == ["aliases:3: root: defined again (first on line 1)"]
