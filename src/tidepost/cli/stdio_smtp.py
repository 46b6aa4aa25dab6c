"""`tidepost sendmail -bs`: an SMTP conversation on standard input and output.

The local user is trusted like any command-line submitter (may send to any
domain); everything else, including the limits and the 250-after-commit
rule, is the SMTP server's own code.
"""

from __future__ import annotations

import asyncio
import os

from tidepost.config.schema import Config


class _StdinStream:
    """ByteStream over file descriptor 0, read off the event loop."""

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes; b'' at end of input."""
        return await asyncio.to_thread(os.read, 0, size)


class _StdoutWriter:
    """Writer over file descriptor 1."""

    def write(self, data: bytes) -> None:
        """Write everything now (replies are small)."""
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]

    async def drain(self) -> None:
        """Writes are synchronous; nothing to wait for."""

    def close(self) -> None:
        """Standard output stays open for the process."""


def run(config: Config) -> int:
    """Serve one SMTP conversation on stdin/stdout; exit 0."""
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    """Build the submission path and run the conversation."""
    from tidepost import node
    from tidepost.control.client import request
    from tidepost.smtp_server.session import Conversation
    parts = node.build(config)
    try:
        conversation = Conversation(config, parts.submission, _StdinStream(), _StdoutWriter(),
                                    peer_ip="127.0.0.1", trusted=True)
        await conversation.run()
    finally:
        await parts.queue.close()
    request(config.spool_path, "wake", timeout=2.0)
    return 0
