"""SMTP in: listeners, one conversation per client, relay policy, named replies.

Start a server with `SmtpServer(config, submission, tls_context).start()`;
run one conversation on any streams with `Conversation(config, submission,
stream, writer, ...).run()`.  Module manuals: listeners.py (accepting),
admission.py (connection slots, the reserve), session.py (one
conversation), outbox.py (its replies), reader.py and pace.py (lines, DATA,
deadlines), parsing.py, access.py, data.py, tls.py, turn.py and auth.py
(ETRN, ATRN, AUTH), batch.py, batch_inbound.py and batch_partials.py
(XTIDEPOST BATCH, docs/BATCH.md), ratelimit.py, rejections.py (the reject log),
replies.py (every reply; docs/REPLIES.md).
"""

from tidepost.smtp_server.access import AccessPolicy
from tidepost.smtp_server.listeners import ServerStatistics, SmtpServer
from tidepost.smtp_server.replies import Reply
from tidepost.smtp_server.session import Conversation

__all__ = ["AccessPolicy", "Conversation", "Reply", "ServerStatistics", "SmtpServer"]
