"""Messages pipelined on one connection (RFC 2920 3.1) and CHUNKING (RFC 3030).

The real dispatcher runs jobs through the real SMTP agent against the
scripted server of test_smtp_client.py, which records what arrived and what
was already waiting behind each message's content when it ended.  The
transcripts show one round trip per message: the next message's commands
ride with this one's content; its content waits for 354 (or, with BDAT, for
the gate) and for the job before to be recorded.
"""

from __future__ import annotations

import asyncio

from test_smtp_client import ScriptedServer, config, one_host, recipients, verdicts

from tidepost.address import parse_mailbox
from tidepost.clock import SystemClock
from tidepost.delivery.smtp import SmtpAgent
from tidepost.manager.dispatch import Dispatcher
from tidepost.model import DeliveryJob, MessageInfo
from tidepost.routing.routes import Destination
from tidepost.scheduler.backoff import Backoff
from tidepost.testing.clock import FakeClock

BODY = b"Subject: pipelined\r\n\r\n.a line that starts with a dot\r\nend\r\n"
PIPELINING = ("PIPELINING", "SIZE 1000000", "ENHANCEDSTATUSCODES")
CHUNKING = (*PIPELINING, "CHUNKING")


def job(n: int, *addresses: str) -> DeliveryJob:
    """Job number n (message id n) to `addresses` (default rN@dest.test)."""
    info = MessageInfo(n, f"Q{n}", parse_mailbox("from@origin.test"), 0.0, len(BODY))
    return DeliveryJob(info, recipients(*(addresses or [f"r{n}@dest.test"])), "uplink",
                       "dest.test")


class Run:
    """The jobs' outcomes in the order they were recorded, and hooks into recording."""

    def __init__(self):
        self.outcomes: dict[int, list] = {}
        self.order: list[int] = []
        self.while_recording = None  # async callable(job), run before a record completes

    async def record(self, the_job, outcomes) -> None:
        if self.while_recording is not None:
            await self.while_recording(the_job)
        self.outcomes[the_job.message.message_id] = outcomes
        self.order.append(the_job.message.message_id)


async def dispatch(server: ScriptedServer, jobs: list[DeliveryJob], run: Run | None = None,
                   **overrides) -> Run:
    """Deliver `jobs` to one destination through the dispatcher, one worker."""
    run = run or Run()
    agent = SmtpAgent(config(smtp_port=server.port, **overrides), one_host(), "client.test",
                      FakeClock())

    async def load_body(message_id: int) -> bytes:
        return BODY

    async with asyncio.TaskGroup() as tasks:
        dispatcher = Dispatcher(tasks, SystemClock(), Backoff(),
                                lambda d: agent.session(None, d.nexthop),
                                concurrency_of=lambda d: 1, load_body=load_body,
                                on_done=run.record, max_concurrency=10)
        for each in jobs:
            dispatcher.submit(each, Destination("uplink", "dest.test"))
        await dispatcher.wait_idle()
    return run


def verbs(connection) -> list[str]:
    """The command verbs a connection received, in order."""
    return [c.split()[0].split(":")[0].upper() for c in connection.commands]


def envelope(n: int) -> bytes:
    """The commands of job n when CHUNKING is not offered."""
    return (b"MAIL FROM:<from@origin.test> SIZE=%d\r\nRCPT TO:<r%d@dest.test>\r\nDATA\r\n"
            % (len(BODY), n))


def stuffed() -> bytes:
    """BODY as it goes after DATA: dot-stuffed, with the terminator."""
    return BODY.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# -- DATA ------------------------------------------------------------------------------


def test_next_message_commands_ride_with_the_content_before():
    async def main():
        # 354 comes late, so every next job has lined up before the content goes
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)])
        return server.connections, run
    connections, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2, 3)] == [["delivered 2.0.0"]] * 3
    assert len(connections) == 1
    conn = connections[0]
    assert verbs(conn) == ["EHLO", *["MAIL", "RCPT", "DATA"] * 3, "QUIT"]  # no RSET
    # waiting behind each message when its dot arrived: the next job's commands
    assert conn.buffered_after_content == [envelope(2), envelope(3), b""]
    # ...sent in the same write as the content: one segment, no gap
    assert any(stuffed() + envelope(2) in chunk for chunk in conn.chunks)
    assert conn.messages == [stuffed()] * 3


def test_content_waits_until_the_job_before_is_recorded():
    run = Run()
    seen: dict[int, int] = {}

    async def main():
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05}) as server:
            async def slow(the_job):
                await asyncio.sleep(0.3)  # a slow group commit
                seen[the_job.message.message_id] = len(server.connections[0].messages)
            run.while_recording = slow
            await dispatch(server, [job(1), job(2)], run)
        return server.connections[0]
    conn = asyncio.run(main())
    assert run.order == [1, 2]
    assert seen[1] == 1  # job 2's content had not gone while job 1 was being recorded
    assert len(conn.messages) == 2


def test_refused_mail_mid_pipeline_settles_each_job_and_the_next_starts_with_rset():
    async def main():
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05},
                                  replies={"MAIL": ["250 ok", "451 4.3.0 not now", "250 ok"],
                                           "DATA": ["354 go", "503 5.5.1 no valid recipients",
                                                    "354 go"]}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["delivered 2.0.0"]
    assert verdicts(run.outcomes[2]) == ["deferred 4.3.0"]
    assert "(in reply to MAIL FROM)" in run.outcomes[2][0].reason
    assert verdicts(run.outcomes[3]) == ["delivered 2.0.0"]
    assert verbs(conn) == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA",
                           "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    assert len(conn.messages) == 2  # job 2 sent no body


def test_354_after_a_refused_mail_gets_a_lone_dot_and_no_body():
    async def main():
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05},
                                  replies={"MAIL": ["250 ok", "550 5.7.1 not you"]}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2, 3)] == [
        ["delivered 2.0.0"], ["bounced 5.7.1"], ["delivered 2.0.0"]]
    assert conn.messages == [stuffed(), b".\r\n", stuffed()]
    assert "RSET" not in verbs(conn)  # the dot ended job 2's transaction


def test_refused_recipients_mid_pipeline_each_get_their_own_outcome():
    rcpt = {"no@dest.test": "550 5.1.1 no such user", "later@dest.test": "450 4.2.1 busy"}
    async def main():
        async with ScriptedServer(extensions=PIPELINING, rcpt=rcpt,
                                  delays={"DATA": 0.05}) as server:
            run = await dispatch(server, [job(1), job(2, "no@dest.test", "yes@dest.test",
                                                  "later@dest.test"), job(3)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[2]) == ["bounced 5.1.1", "delivered 2.0.0", "deferred 4.2.1"]
    assert [verdicts(run.outcomes[n]) for n in (1, 3)] == [["delivered 2.0.0"]] * 2
    assert len(conn.messages) == 3


def test_421_to_a_dot_defers_that_job_and_the_one_behind_is_sent_once_on_a_new_connection():
    async def main():
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05},
                                  replies={"DOT": ["421 4.3.2 shutting down"]}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)])
        return server.connections, run
    connections, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["deferred 4.3.2"]
    assert [verdicts(run.outcomes[n]) for n in (2, 3)] == [["delivered 2.0.0"]] * 2
    assert len(connections) == 2
    assert envelope(2) in connections[0].buffered_after_content[0]  # it had been sent...
    assert len(connections[0].messages) == 1                        # ...but not its body
    assert len(connections[1].messages) == 2                        # each body once


def test_hang_up_mid_pipeline_defers_what_got_no_answer_and_sends_no_body_twice():
    async def main():
        async with ScriptedServer(extensions=PIPELINING, delays={"DATA": 0.05},
                                  replies={"RCPT": ["250 ok", "250 ok"]},
                                  close_after=("RCPT",)) as server:
            run = await dispatch(server, [job(1), job(2)])
        return server.connections, run
    connections, run = asyncio.run(main())
    # the server hangs up after the first RCPT of each connection: job 1 got
    # no reply to DATA (deferred); job 2 on the next connection the same
    assert verdicts(run.outcomes[1]) == ["deferred 4.4.2"]
    assert verdicts(run.outcomes[2]) == ["deferred 4.4.2"]
    assert sum(len(c.messages) for c in connections) == 0


# -- CHUNKING ----------------------------------------------------------------------------


def test_chunking_sends_the_message_unstuffed_after_the_rcpt_replies():
    async def main():
        async with ScriptedServer(extensions=CHUNKING) as server:
            run = await dispatch(server, [job(1)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["delivered 2.0.0"]
    commands = b"MAIL FROM:<from@origin.test> SIZE=%d\r\nRCPT TO:<r1@dest.test>\r\n" % len(BODY)
    assert commands in conn.chunks                        # then wait for the replies
    assert b"BDAT %d LAST\r\n" % len(BODY) + BODY in conn.chunks
    assert conn.messages == [BODY]                        # as stored: no dot-stuffing
    assert "DATA" not in verbs(conn)
    assert "(in reply to BDAT)" in run.outcomes[1][0].reason


def test_chunking_streams_the_first_message_with_its_commands_at_depth_2():
    async def main():
        async with ScriptedServer(extensions=CHUNKING) as server:
            run = await dispatch(server, [job(1)], pipeline_depth=2)
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["delivered 2.0.0"]
    group = (b"MAIL FROM:<from@origin.test> SIZE=%d\r\nRCPT TO:<r1@dest.test>\r\n"
             b"BDAT %d LAST\r\n" % (len(BODY), len(BODY)) + BODY)
    assert any(group in chunk for chunk in conn.chunks)  # one write, no reply waited for


def test_chunking_refused_first_recipient_costs_no_body_at_depth_1():
    async def main():
        async with ScriptedServer(extensions=CHUNKING,
                                  rcpt={"no@dest.test": "450 4.7.1 greylisted"}) as server:
            run = await dispatch(server, [job(1, "no@dest.test")])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["deferred 4.7.1"]
    assert conn.messages == [] and "BDAT" not in verbs(conn)


def test_chunking_later_messages_wait_for_the_replies_and_the_record_before():
    async def main():
        async with ScriptedServer(extensions=CHUNKING, delays={"BDAT": 0.05}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2, 3)] == [["delivered 2.0.0"]] * 3
    # the next commands go before BDAT's reply is known: RSET first (RFC 3030)
    assert verbs(conn) == ["EHLO", "MAIL", "RCPT", "BDAT", *["RSET", "MAIL", "RCPT", "BDAT"] * 2,
                           "QUIT"]
    assert conn.buffered_after_content[0].startswith(b"RSET\r\nMAIL FROM")
    assert b"BDAT" not in conn.buffered_after_content[0]  # its chunk waited (depth 1)
    assert conn.messages == [BODY] * 3


def test_chunking_sends_no_chunk_when_every_recipient_was_refused():
    rcpt = {"no@dest.test": "550 5.1.1 no such user"}
    async def main():
        async with ScriptedServer(extensions=CHUNKING, rcpt=rcpt,
                                  delays={"BDAT": 0.05}) as server:
            run = await dispatch(server, [job(1), job(2, "no@dest.test"), job(3)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2, 3)] == [
        ["delivered 2.0.0"], ["bounced 5.1.1"], ["delivered 2.0.0"]]
    assert conn.messages == [BODY, BODY]


def test_chunking_refused_chunk_bounces_the_accepted_and_the_next_resets():
    async def main():
        async with ScriptedServer(extensions=CHUNKING,
                                  replies={"BDAT": ["554 5.7.1 spam", "250 2.0.0 ok"]}) as server:
            run = await dispatch(server, [job(1, "a@dest.test", "b@dest.test"), job(2)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert verdicts(run.outcomes[1]) == ["bounced 5.7.1", "bounced 5.7.1"]
    assert verdicts(run.outcomes[2]) == ["delivered 2.0.0"]
    assert verbs(conn)[:6] == ["EHLO", "MAIL", "RCPT", "RCPT", "BDAT", "RSET"]


def test_chunking_with_depth_2_streams_the_next_message_before_the_reply():
    async def main():
        async with ScriptedServer(extensions=CHUNKING, delays={"BDAT": 0.2}) as server:
            run = await dispatch(server, [job(1), job(2), job(3)], pipeline_depth=2)
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2, 3)] == [["delivered 2.0.0"]] * 3
    assert b"BDAT %d LAST\r\n" % len(BODY) in conn.buffered_after_content[0]
    assert conn.messages == [BODY] * 3


def test_without_pipelining_jobs_go_one_after_another():
    async def main():
        async with ScriptedServer(extensions=("SIZE 1000000",)) as server:
            run = await dispatch(server, [job(1), job(2)])
        return server.connections[0], run
    conn, run = asyncio.run(main())
    assert [verdicts(run.outcomes[n]) for n in (1, 2)] == [["delivered 2.0.0"]] * 2
    assert conn.buffered_after_content == [b"", b""]
