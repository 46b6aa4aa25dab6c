"""STARTTLS for server connections: the context, and the in-place upgrade.

`context_from_config(config)` loads `smtp.tls_certificate` and `smtp.tls_key`
into a server `ssl.SSLContext` (None when no certificate is configured, which
disables STARTTLS).  `upgrade(writer, context)` turns a plain asyncio stream
connection into a TLS one and returns a NEW reader and writer.

Why a new reader: RFC 3207 section 4.2 (and CVE-2011-0411) require that
plaintext a client (or an attacker in the path) sent after STARTTLS is never
read as if it had come over TLS.  `StreamWriter.start_tls()` keeps the old
`StreamReader`, whose buffer may still hold such plaintext; a fresh
`StreamReader` behind a fresh protocol starts empty, so only decrypted bytes
reach the session, which also starts a new SmtpReader on it.

Why `connection_made` is called by hand: `loop.start_tls()` never calls it on
the protocol it is given (the connection was made long before), so the fresh
StreamReaderProtocol would not know its transport is TLS: its
`eof_received()` would then return True, which the TLS layer answers with the
warning "returning true from eof_received() has no effect when using ssl" at
every client EOF, and its StreamReader would have no transport to pause
when its buffer fills (no flow control for a client that floods us).
`StreamWriter.start_tls()` does the same bookkeeping for its own protocol.
"""

from __future__ import annotations

import asyncio
import ssl

from tidepost.config.schema import Config
from tidepost.errors import ConfigError

HANDSHAKE_TIMEOUT = 30.0  # seconds


def context_from_config(config: Config) -> ssl.SSLContext | None:
    """A server TLS context from the configured certificate, or None.

    ConfigError names the key and the file that cannot be read or loaded
    (`serve` exits 78 with it; `config check` reports the same line).
    """
    certificate, key = config.smtp.tls_certificate, config.smtp.tls_key
    if not certificate:
        if key:
            raise ConfigError(["smtp.tls_key: set without smtp.tls_certificate"])
        return None
    for name, path in (("smtp.tls_certificate", certificate), ("smtp.tls_key", key)):
        try:
            if path:
                open(path, "rb").close()
        except OSError as exc:
            raise ConfigError([f"{path}: {name}: cannot read: {exc.strerror or exc}"]) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certificate, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{certificate}: smtp.tls_certificate: cannot load the certificate "
                           f"and key{f' {key}' if key else ''}: {exc}"]) from None
    return context


async def upgrade(writer: asyncio.StreamWriter, context: ssl.SSLContext
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Run the server side of a TLS handshake; return the new reader and writer."""
    loop = asyncio.get_running_loop()
    await writer.drain()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = await loop.start_tls(writer.transport, protocol, context, server_side=True,
                                     ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    protocol.connection_made(transport)  # see the module docstring
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
