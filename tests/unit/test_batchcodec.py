"""The XTIDEPOST BATCH stream codec: round trips, chunking, and what it refuses."""

from __future__ import annotations

import os
import tracemalloc
import zlib

import pytest

from tidepost import batchcodec as codec


def encode(messages, chunk_every: int = 0) -> list[bytes]:
    """Chunks of a stream carrying `messages` [(tid, offset, body, rcpts)]."""
    encoder = codec.BatchEncoder()
    chunks, pending = [], b""
    for tid, offset, body, rcpts in messages:
        for octets in encoder.message(tid, offset, body, "MAIL FROM:<a@x.test>", rcpts):
            pending += octets
            if chunk_every and len(pending) >= chunk_every:
                chunks.append(pending + encoder.flush())
                pending = b""
    chunks.append(pending + encoder.flush())
    return chunks


def decode(chunks) -> list:
    decoder = codec.BatchDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def bodies(events) -> dict[str, bytes]:
    """tid -> the octets its record carried."""
    found, current = {}, None
    for event in events:
        if isinstance(event, codec.Begin):
            current = event.transfer_id
            found[current] = b""
        elif isinstance(event, codec.Data):
            found[current] += event.octets
    return found


def test_round_trip_many_messages_in_chunks():
    text = b"".join(b"Line %d of a fairly ordinary message\r\n" % i for i in range(3000))
    binary = os.urandom(300_000)
    messages = [("m1", 0, text, ["RCPT TO:<b@y.test>", "RCPT TO:<c@y.test>"]),
                ("m2", 0, binary, ["RCPT TO:<d@y.test>"]),
                ("m3", 0, b"", ["RCPT TO:<e@y.test>"])]
    chunks = encode(messages, chunk_every=32 * 1024)
    assert len(chunks) > 5
    events = decode(chunks)
    assert bodies(events) == {"m1": text, "m2": binary, "m3": b""}
    envelopes = [e for e in events if isinstance(e, codec.Envelope)]
    assert envelopes[0].rcpts == ("RCPT TO:<b@y.test>", "RCPT TO:<c@y.test>")
    assert sum(isinstance(e, codec.End) for e in events) == 3


def test_a_resumed_record_carries_only_the_rest():
    body = os.urandom(100_000)
    events = decode(encode([("big", 60_000, body, ["RCPT TO:<b@y.test>"])]))
    assert events[0] == codec.Begin("big", 60_000, 100_000)
    assert bodies(events)["big"] == body[60_000:]


def test_similar_messages_compress_as_one_stream():
    messages = [(f"m{i}", 0, b"Received: from site.test\r\nSubject: report %d\r\n\r\n" % i
                 + b"The weekly figures are attached as before.\r\n" * 40,
                 ["RCPT TO:<b@y.test>"]) for i in range(50)]
    raw = sum(len(body) for _, _, body, _ in messages)
    assert len(b"".join(encode(messages))) < raw / 10


def test_a_decompression_bomb_is_refused_with_bounded_memory():
    # A record declaring 1 MB whose piece claims 64 KiB but whose stream
    # then inflates 30 MB of zeros: refused as soon as it passes the declared size.
    head = b"MSG bomb 0 1000000\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
    compressor = zlib.compressobj(9)
    chunk = compressor.compress(head)
    zeros = bytes(1 << 20)
    for _ in range(30):
        chunk += compressor.compress(zeros)
    chunk += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(chunk) < 100_000
    decoder = codec.BatchDecoder()
    tracemalloc.start()
    with pytest.raises(codec.StreamError):
        for _ in decoder.feed(chunk):
            pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert decoder.raw < 2 * codec.PIECE_LIMIT


def test_data_past_the_declared_total_is_refused():
    forged = zlib.compressobj()
    raw = (b"MSG t 0 10\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA 20\r\n"
           + b"x" * 20 + b"END\r\n")
    chunk = forged.compress(raw) + forged.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(codec.StreamError, match="past the declared total"):
        decode([chunk])


def test_a_corrupt_stream_is_refused():
    chunks = encode([("m1", 0, b"hello\r\n" * 1000, ["RCPT TO:<b@y.test>"])])
    damaged = bytearray(chunks[0])
    damaged[len(damaged) // 2] ^= 0xFF
    damaged[len(damaged) // 2 + 1] ^= 0xFF
    with pytest.raises(codec.StreamError):
        decode([bytes(damaged)])


def test_a_truncated_chunk_leaves_the_record_open_and_decodes_no_garbage():
    body = os.urandom(50_000)
    chunk = encode([("m1", 0, body, ["RCPT TO:<b@y.test>"])])[0]
    decoder = codec.BatchDecoder()
    events = list(decoder.feed(chunk[:len(chunk) // 2]))
    got = b"".join(e.octets for e in events if isinstance(e, codec.Data))
    assert body.startswith(got) and len(got) < len(body)
    assert decoder.in_message and not any(isinstance(e, codec.End) for e in events)


def test_a_stream_that_ends_inside_the_session_is_refused():
    compressor = zlib.compressobj()
    chunk = compressor.compress(b"MSG t 0 0\r\n") + compressor.flush()  # Z_FINISH
    with pytest.raises(codec.StreamError, match="ended"):
        decode([chunk + b"more"])


@pytest.mark.parametrize("raw", [
    b"HELLO\r\n",                                          # not a MSG line
    b"MSG ../etc 0 10\r\n",                                # not a transfer id
    b"MSG t 5 1\r\n",                                      # offset past the total
    b"MSG t 0 1\r\nRCPT TO:<b@y.test>\r\n",                # MAIL missing
    b"MSG t 0 1\r\nMAIL FROM:<a@x.test>\r\nDATA 1\r\n",    # RCPT missing
    b"MSG t 0 3\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nEND\r\n",  # short
    b"X" * (codec.LINE_LIMIT + 10),                         # endless line
])
def test_malformed_records_are_refused(raw):
    compressor = zlib.compressobj()
    with pytest.raises(codec.StreamError):
        decode([compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)])
