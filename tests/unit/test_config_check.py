"""`tidepost config check`: every problem of the config and its files in one run."""

from pathlib import Path

from tidepost.cli.main import main


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_one_run_reports_the_config_and_every_file_serve_would_open(tmp_path, capsys):
    aliases = write(tmp_path, "aliases", "root: alice\nroot: bob\n")
    customers = write(tmp_path, "customers", "example.org\n*\n")
    credentials = write(tmp_path, "credentials", "ship1 no-colon-here\n")
    config = write(tmp_path, "tidepost.toml", f"""
[smtp]
max_recipients = 0
tls_certificate = "{tmp_path}/missing.pem"
[local]
aliases_file = "{aliases}"
[relay]
customer_domains_file = "{customers}"
credentials_file = "{credentials}"
[system]
user = "no-such-account-here"
[[route]]
name = "up"
transport = "smarthost"
""")
    assert main(["config", "check", "-c", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert f"{config}:3: smtp.max_recipients: 0 is below the minimum 1" in err
    assert f"{config}:12: route[0].smarthost: transport smarthost needs a smarthost" in err
    assert f"{aliases}:2: root: defined again (first on line 1)" in err
    assert any(line.startswith(f"{customers}:2: '*'") for line in err)
    assert any(line.startswith(f"{credentials}:1: expected user:") for line in err)
    assert any(line.startswith(f"{tmp_path}/missing.pem: smtp.tls_certificate:") for line in err)
    assert f"warning: {config}: system.user: no account named 'no-such-account-here': " \
           "started as root, serve would keep root (`tidepost install` creates the " \
           "account)" in err
    assert err[-1] == "6 problems found"


def test_a_good_config_says_ok(tmp_path, capsys):
    config = write(tmp_path, "tidepost.toml", '[system]\nuser = "root"\n')
    assert main(["config", "check", "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith(f"{config}: OK")
