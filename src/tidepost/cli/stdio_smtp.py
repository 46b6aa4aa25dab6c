"""`tidepost sendmail -bs`: an SMTP conversation on standard input and output.

The local user is trusted like any command-line submitter (may send to any
domain); everything else, including the limits and the 250-after-commit
rule, is the SMTP server's own code.  The spool's account (and root, who
becomes it) queues directly; any other user's messages go, each after its
DATA, the way `tidepost sendmail` sends (cli/local_transport.py: the
daemon's socket, else the maildrop), with MAIL FROM standing for -f: the
250 comes only once the daemon has committed the message.
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
    from tidepost.accounts import is_root
    from tidepost.cli.local_transport import may_write_queue
    from tidepost.control.client import request
    if not (is_root() or may_write_queue(config.spool_path)):
        await _converse(config, _Forwarding(config))
        return 0
    from tidepost.startup import become_spool_owner
    become_spool_owner(config)
    parts = node.build(config)
    try:
        await _converse(config, parts.submission)
    finally:
        await parts.close()
    request(config.spool_path, "wake", timeout=2.0)
    return 0


async def _converse(config: Config, submission) -> None:
    """One trusted SMTP conversation over standard input and output."""
    from tidepost.smtp_server.session import Conversation
    conversation = Conversation(config, submission, _StdinStream(), _StdoutWriter(),
                                peer_ip="127.0.0.1", trusted=True)
    await conversation.run()


class _Forwarding:
    """A Submission that hands each message on like `tidepost sendmail` (no queue access)."""

    def __init__(self, config: Config):
        from tidepost.routing.routes import Router
        from tidepost.submission.aliases import Aliases
        from tidepost.submission.submit import Submission
        self._config = config
        self._checks = Submission(config, None, None, Router(config),  # type: ignore[arg-type]
                                  Aliases(config))

    def __getattr__(self, name: str):
        """Recipient checks (local users, routes) are the real Submission's."""
        return getattr(self._checks, name)

    async def submit(self, envelope, body: bytes, client) -> str:
        """Send one message on; the queue id, or SubmissionRejected."""
        from tidepost.cli.local_transport import hand_over
        from tidepost.submission.local import LocalRequest
        from tidepost.submission.submit import SubmissionRejected
        request = LocalRequest(tuple(str(r) for r in envelope.recipients), body,
                               sender=str(envelope.sender))
        result = await asyncio.to_thread(hand_over, self._config, request)
        if result.code != 0:
            code = 451 if result.code == 75 else 554
            raise SubmissionRejected(code, "4.3.0" if code == 451 else "5.0.0", result.text)
        return result.queue_id or "(maildrop)"
