"""SMTP in: listeners, one conversation per client, relay policy, named replies.

Start a server with `SmtpServer(config, submission, tls_context).start()`;
run one conversation on any streams with `Conversation(config, submission,
stream, writer, ...).run()`.  Module manuals: listeners.py, session.py,
reader.py, access.py, parsing.py, data.py, tls.py, replies.py.
"""

from tidepost.smtp_server.access import AccessPolicy
from tidepost.smtp_server.listeners import ServerStatistics, SmtpServer
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.session import Conversation

__all__ = ["AccessPolicy", "Conversation", "Reply", "ServerStatistics", "SmtpServer"]
