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
    found = problems('[[route]]\nname = "lan"\n[[route]]\nname = "up"\n'
                     'transport = "smarthost"\n')
    assert found == ["site.toml:3: route[1].smarthost: transport smarthost needs a smarthost"]
    found = problems('[[route]]\nname = "a"\ntransport = "pigeon"\n')
    assert found == ["site.toml:3: route[0].transport: 'pigeon' is not one of mx, smarthost"]


def test_toml_syntax_errors_name_the_file():
    [problem] = problems("[smtp\n")
    assert problem.startswith("site.toml: TOML syntax error")


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
