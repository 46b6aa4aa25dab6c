"""The mail log's `reject` lines (docs/LOGGING.md) for representative refusals."""

from __future__ import annotations

import logging

import pytest
from test_smtp_server import make_config, run

from tidepost.cli.logsetup import component_of
from tidepost.smtp_server import replies as S


@pytest.fixture
def rejects(caplog):
    """The `reject` lines logged by the SMTP server during the test (component smtpd)."""
    assert component_of("tidepost.smtp_server.reject") == "smtpd"
    caplog.set_level(logging.INFO, logger="tidepost.smtp_server.reject")
    return lambda: [r.getMessage() for r in caplog.records
                    if r.name == "tidepost.smtp_server.reject" and " reject " in r.getMessage()]


def test_rcpt_and_mail_refusals_are_logged_with_the_envelope(rejects):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.cmd("MAIL FROM:<a@@origin.test> SIZE=10") == S.S501_BAD_SENDER
        await c.cmd("MAIL FROM:<spammer@origin.test>")
        assert await c.cmd("RCPT TO:<user%remote.example@local.example>") == \
            S.S550_RELAY_DENIED
    run(scenario)
    assert rejects() == [
        'NOQUEUE: reject command=MAIL, client=client.test[127.0.0.1], helo=client.test, '
        'from=<a@@origin.test>, reply="501 5.1.7 Bad sender address syntax"',
        'NOQUEUE: reject command=RCPT, client=client.test[127.0.0.1], helo=client.test, '
        'from=<spammer@origin.test>, to=<user%remote.example@local.example>, '
        'reply="550 5.7.1 Relaying denied"']


def test_end_of_data_refusal_is_logged(rejects):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.message(b"a\0b\r\n.\r\n") == S.S554_NUL
    run(scenario)
    assert rejects() == [
        'NOQUEUE: reject command=end-of-data, client=client.test[127.0.0.1], '
        'helo=client.test, from=<sender@origin.test>, to=<alice@local.example>, '
        'reply="554 5.6.0 Message contains NUL characters"']


def test_refused_connection_is_logged_as_connect(rejects):
    async def scenario(connect, server):
        assert (await (await connect()).reply()).code == 220
        assert await (await connect()).reply() == S.S421_TOO_MANY_FROM_CLIENT
    run(scenario, make_config(max_connections_per_client=1))
    assert rejects() == [
        'NOQUEUE: reject command=CONNECT, client=unknown[127.0.0.1], '
        f'reply="{S.S421_TOO_MANY_FROM_CLIENT.line()}"']


def test_timeout_is_logged_after_the_last_command(rejects):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        await c.send(b"NOO")
        assert await c.reply() == S.S421_COMMAND_TIMEOUT
    run(scenario, make_config(command_deadline=0.2))
    assert rejects() == [
        'NOQUEUE: reject command=EHLO, client=client.test[127.0.0.1], helo=client.test, '
        f'reply="{S.S421_COMMAND_TIMEOUT.line()}"']


def test_hostile_helo_cannot_forge_a_log_key(rejects):
    async def scenario(connect, server):
        c = await connect()
        await c.reply()
        await c.cmd("EHLO x,reply=250")
        assert await c.cmd("FROB") == S.S500_UNKNOWN_COMMAND
    run(scenario)
    assert rejects() == [
        'NOQUEUE: reject command=FROB, client="x,reply=250[127.0.0.1]", '
        'helo="x,reply=250", reply="500 5.5.1 Command unrecognized"']


def test_success_is_not_a_reject(rejects):
    async def scenario(connect, server):
        c = await connect()
        await c.ehlo()
        assert await c.message(b"fine\r\n.\r\n") == S.queued("Q1")
    run(scenario)
    assert rejects() == []
