"""Configuration loading: defaults, and errors that name file, line and key."""

import pytest

from tidepost.config.load import load_config, parse_config
from tidepost.errors import ConfigError


def test_embedded_default_holds_the_uplink_and_listens_on_loopback():
    config = load_config(None)
    assert config.smtp.listen == ("127.0.0.1:2525",)
    assert "localhost" in config.local_domains
    [uplink] = config.route
    assert (uplink.name, uplink.domains, uplink.start_held, uplink.on_demand) == \
        ("uplink", ("*",), True, True)


def test_units_are_parsed():
    config = parse_config('[queue]\nlifetime = "2d"\nmin_backoff = 90\n'
                          '[smtp]\nmax_message_size = "10M"\n', "t.toml")
    assert config.queue.lifetime == 2 * 86400
    assert config.queue.min_backoff == 90
    assert config.smtp.max_message_size == 10 * 1024 * 1024


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    return caught.value.problems


def test_every_problem_is_reported_with_line_and_key():
    found = problems('hostname = "h"\n[smtp]\nmax_recipients = 0\nlisten = 5\n'
                     'colour = "blue"\n[queue]\nlifetime = "soon"\n')
    assert "site.toml:3: smtp.max_recipients: 0 is below the minimum 1" in found
    assert "site.toml:4: smtp.listen: expected a list" in found
    assert "site.toml:5: smtp.colour: unknown key" in found
    assert "site.toml:7: queue.lifetime: 'soon' is not a duration" in found


def test_route_errors_point_at_the_route():
    found = problems('[[route]]\nname = "lan"\ndomains = [".lan"]\n[[route]]\nname = "up"\n'
                     'transport = "smarthost"\n')
    assert found == ["site.toml:4: route[1].smarthost: transport smarthost needs a smarthost"]
    found = problems('[[route]]\nname = "a"\ntransport = "pigeon"\n')
    assert found == ["site.toml:3: route[0].transport: 'pigeon' is not one of mx, smarthost"]


def test_toml_syntax_errors_name_the_file():
    [problem] = problems('hostname = "h"\n[smtp\n')
    assert problem.startswith("site.toml:2: TOML syntax error: Expected ']'")


def test_bad_relay_network():
    [problem] = problems('[smtp]\nrelay_networks = ["10.0.0.0/33"]\n')
    assert problem.startswith("site.toml:2: smtp.relay_networks[0]")


def test_domains_are_normalised_and_star_is_no_relay_domain():
    config = parse_config('[local]\ndomains = ["Site.Test.", "[127.0.0.1]"]\n'
                          '[relay]\ndomains = [".Customer.Example"]\n', "t")
    assert config.local.domains == ("site.test", "[127.0.0.1]")
    assert config.relay.domains == (".customer.example",)
    assert problems('[relay]\ndomains = ["*"]\n') == [
        "site.toml:2: relay.domains: '*' would make an open relay; use smtp.relay_networks"]
    assert problems('[local]\ndomains = ["bad domain"]\n')[0].startswith(
        "site.toml:2: local.domains[0]:")


def test_value_and_semantic_problems_come_in_one_pass():
    found = problems('[smtp]\nmax_recipients = 0\nlisten = ["127.0.0.1"]\n'
                     '[[route]]\nname = "all"\n'
                     '[[route]]\nname = "all"\ndomains = [".example.org"]\n'
                     '[[route]]\nname = "relay"\ntransport = "smarthost"\n'
                     'smarthost = "mail.isp.example:99999x"\n')
    assert found == [
        "site.toml:2: smtp.max_recipients: 0 is below the minimum 1",
        "site.toml:3: smtp.listen[0]: '127.0.0.1' is not HOST:PORT ([v6 address]:PORT, "
        "*:PORT for all addresses)",
        "site.toml:5: route[0].name: route name 'all' is taken",
        "site.toml:7: route[1].name: route name 'all' is taken",
        "site.toml:8: route[1].domains: route 'all' can never be used: route 'all' "
        "before it already takes .example.org",
        "site.toml:9: route[2].domains: route 'relay' can never be used: route 'all' "
        "before it already takes *",
        "site.toml:12: route[2].smarthost: 'mail.isp.example:99999x' is not HOST[:PORT] "
        "or [HOST]:PORT"]


def test_a_size_limited_route_does_not_hide_the_next_one():
    config = parse_config('[[route]]\nname = "sat"\nmax_message_size = "1M"\n'
                          '[[route]]\nname = "harbour"\n', "t")
    assert [r.name for r in config.route] == ["sat", "harbour"]
    assert problems('[[route]]\nname = "lan"\ndomains = [".office.example"]\n'
                    '[[route]]\nname = "branch"\ndomains = ["a.office.example"]\n') == [
        "site.toml:6: route[1].domains: route 'branch' can never be used: route 'lan' "
        "before it already takes a.office.example"]


def test_a_bad_value_is_reported_once_not_again_by_the_semantic_checks():
    assert problems('[[route]]\nname = "up"\ntransport = "smarthost"\nsmarthost = 5\n') == [
        "site.toml:4: route[0].smarthost: expected str, got int"]


def test_non_finite_numbers_and_deep_nesting_are_errors():
    # Found by fuzzing (bench/fuzz.py, target config): nan and inf passed every
    # bound (they compare false), and deep nesting crashed tomllib.
    found = problems('[smtp]\nidle_timeout = nan\n[queue]\nlifetime = inf\n'
                     f'min_backoff = "{"9" * 400}s"\n')
    assert found == ["site.toml:2: smtp.idle_timeout: nan is not a finite number",
                     "site.toml:4: queue.lifetime: inf is not a finite number",
                     "site.toml:5: queue.min_backoff: inf is not a finite number"]
    assert problems("x = " + "[" * 5000) == ["site.toml: TOML nested too deeply"]
    assert problems(f"[queue]\nlifetime = {'9' * 400}\n") == [
        "site.toml:2: queue.lifetime: inf is not a finite number"]  # too large for a float


def test_the_reserve_must_leave_connections_for_others():
    [problem] = problems("[smtp]\nmax_connections = 10\n")
    assert problem == ("site.toml:1: smtp.reserved_connections: 20 leaves no connection "
                       "for other clients (smtp.max_connections is 10)")


def test_the_postgresql_queue_needs_a_database():
    found = problems('[queue]\nbackend = "postgresql"\n')
    assert found == ["site.toml:1: queue.dsn: backend postgresql needs the database "
                     "(postgresql://user@host:port/database)"]
    config = parse_config('[queue]\nbackend = "postgresql"\ndsn = "postgresql://t@db/t"\n'
                          'node = "mx1"\nnode_timeout = "10s"\n', "site.toml")
    assert (config.queue.dsn, config.queue.node, config.queue.node_timeout) == \
        ("postgresql://t@db/t", "mx1", 10.0)
