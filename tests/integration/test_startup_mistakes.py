"""A new admin's mistakes at `tidepost serve`: a clear line naming the key, never a traceback.

Each test starts a real daemon on a configuration with one mistake in it
(a port another program holds, a TLS key that is not there) and reads what
it says on standard error before it exits.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from conftest import tidepost_argv

pytestmark = pytest.mark.integration


def serve_fails(node) -> tuple[int, str]:
    """Run `tidepost serve` on the node's config until it exits; its status and stderr."""
    done = subprocess.run([*tidepost_argv(), "serve", "-c", str(node.config_path)],
                          capture_output=True, timeout=60)
    return done.returncode, done.stderr.decode(errors="replace")


def test_a_port_already_in_use_names_the_listen_entry(tidepost_node):
    node = tidepost_node(start=False)
    holder = socket.create_server(("127.0.0.1", node.port))
    try:
        status, err = serve_fails(node)
    finally:
        holder.close()
    assert status != 0 and "Traceback" not in err
    assert f"smtp.listen: cannot listen on 127.0.0.1:{node.port}: Address already in use" \
        in err, err


def test_a_missing_tls_key_names_the_key_and_its_file(tidepost_node, tmp_path):
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=site.test", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    missing = tmp_path / "missing-key.pem"
    node = tidepost_node(start=False, smtp={"tls_certificate": str(certificate),
                                            "tls_key": str(missing)})
    status, err = serve_fails(node)
    assert status == 78 and "Traceback" not in err, err
    assert f"{missing}: smtp.tls_key: cannot read: No such file or directory" in err, err
    checked = subprocess.run([*tidepost_argv(), "config", "check", "-c", str(node.config_path)],
                             capture_output=True)
    assert checked.returncode == 1
    assert f"{missing}: smtp.tls_key: cannot read" in checked.stderr.decode(), checked.stderr
