"""The XTIDEPOST BATCH stream: records of messages, one deflate stream per session.

Both ends of a batch transfer (smtp_client/batch.py sends, smtp_server/
batch.py receives) use this module; it does no I/O.  docs/BATCH.md is the
specification; in short, the uncompressed stream is a sequence of records:

    MSG <transfer-id> <offset> <total>       CRLF   one message (or its rest)
    MAIL FROM:<sender> [BODY=8BITMIME] [SMTPUTF8] [RET= ENVID=]   CRLF
    RCPT TO:<recipient> [NOTIFY= ORCPT=]     CRLF   one or more
    DATA <n>                                 CRLF   then n octets of the message, as stored
    ...                                             (more DATA pieces)
    END                                      CRLF   the pieces reached <total>

and it travels compressed as one zlib (RFC 1950) stream that the sender
flushes (Z_SYNC_FLUSH) at the end of every XBATCH chunk, so each chunk can
be decoded as soon as it has arrived while the dictionary is kept from one
message to the next (that is where many small messages gain most).

`BatchEncoder` builds the stream: `message(...)` yields compressed octets,
`flush()` ends a chunk (or makes what zlib holds back visible, so that the
sender can cut chunks of a given compressed size: `unflushed` counts it).  `BatchDecoder.feed(chunk)` yields `Event`s (Begin,
Envelope, Data, End) and raises `StreamError` on anything malformed:
a corrupt or truncated deflate stream, a line over LINE_LIMIT, a DATA piece
over PIECE_LIMIT or past the message's declared total, a record out of
order.  Decompression-bomb limits: output is produced PIECE_LIMIT octets at
a time (memory stays bounded whatever the ratio), and every octet must
belong to a record whose size was declared first, so the receiver's size
limit on <total> bounds the work too.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

LINE_LIMIT = 2048              # octets incl. CRLF, as an SMTP command line
PIECE_LIMIT = 64 * 1024        # octets of one DATA piece, and of one decompression step
MAX_CHUNK = 1024 * 1024        # compressed octets of one XBATCH chunk, at most
LEVEL = 6                      # zlib level: 9 gains <1% on mail for twice the CPU
_TRANSFER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


class StreamError(Exception):
    """The batch stream is malformed; the session's stream cannot continue."""


def valid_transfer_id(text: str) -> bool:
    """True for a transfer id: 1-64 of letters, digits, '.', '_', '-' (a file name)."""
    return bool(_TRANSFER_ID.match(text))


@dataclass(frozen=True, slots=True)
class Begin:
    """MSG: a message (or its rest, from `offset`) of `total` octets starts."""

    transfer_id: str
    offset: int
    total: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """The MAIL line and the RCPT lines of the message begun, as SMTP command text."""

    mail: str
    rcpts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the message's content."""

    octets: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The message begun is complete."""


Event = Begin | Envelope | Data | End


class BatchEncoder:
    """Builds the compressed batch stream of one session."""

    def __init__(self, level: int = LEVEL):
        self._zlib = zlib.compressobj(level)
        self.raw = 0          # uncompressed octets fed so far
        self.compressed = 0   # compressed octets produced so far
        self.unflushed = 0    # uncompressed octets fed since the last flush

    def message(self, transfer_id: str, offset: int, body: bytes, mail: str,
                rcpts: list[str], piece: int = PIECE_LIMIT // 4) -> Iterator[bytes]:
        """The compressed octets of one record: `body[offset:]` in pieces of `piece`."""
        if not valid_transfer_id(transfer_id):
            raise ValueError(f"bad transfer id {transfer_id!r}")
        head = f"MSG {transfer_id} {offset} {len(body)}\r\n{mail}\r\n"
        head += "".join(f"{rcpt}\r\n" for rcpt in rcpts)
        yield self._feed(head.encode("utf-8"))
        view = memoryview(body)
        for start in range(offset, len(body), piece):
            part = view[start:start + piece]
            yield self._feed(b"DATA %d\r\n" % len(part) + part)
        yield self._feed(b"END\r\n")

    def flush(self) -> bytes:
        """Everything fed so far, decodable by the receiver (the end of a chunk)."""
        out = self._zlib.flush(zlib.Z_SYNC_FLUSH)
        self.compressed += len(out)
        self.unflushed = 0
        return out

    def _feed(self, data: bytes) -> bytes:
        """Compress `data`; what zlib gives back now (it may keep some)."""
        self.raw += len(data)
        self.unflushed += len(data)
        out = self._zlib.compress(data)
        self.compressed += len(out)
        return out


class BatchDecoder:
    """Parses the batch stream of one session, chunk by chunk, with bounded memory."""

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj()
        self._buffer = bytearray()
        self._state = "MSG"          # what the next line must be: MSG, MAIL, RCPT, PIECE
        self._data_left = 0          # octets of the current DATA piece still to come
        self._message_left = 0       # octets of the current message still to come
        self._mail = ""
        self._rcpts: list[str] = []
        self.raw = 0                 # uncompressed octets decoded so far

    @property
    def in_message(self) -> bool:
        """True while a record is open (its END not yet decoded)."""
        return self._state != "MSG"

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events in one chunk; StreamError when the stream is malformed."""
        source = chunk
        while True:
            try:
                out = self._zlib.decompress(source, PIECE_LIMIT)
            except zlib.error as error:
                raise StreamError(f"corrupt compressed stream: {error}") from None
            if self._zlib.eof:
                raise StreamError("the compressed stream ended inside the session")
            self.raw += len(out)
            self._buffer += out
            yield from self._events()
            source = self._zlib.unconsumed_tail
            if not source and len(out) < PIECE_LIMIT:
                return  # zlib holds nothing more for us: the rest comes with the next chunk

    def _events(self) -> Iterator[Event]:
        """The events the buffered octets complete."""
        while True:
            if self._data_left:
                take = min(self._data_left, len(self._buffer))
                if not take:
                    return
                piece = bytes(self._buffer[:take])
                del self._buffer[:take]
                self._data_left -= take
                yield Data(piece)
                continue
            line = self._line()
            if line is None:
                return
            yield from self._on_line(line)

    def _line(self) -> str | None:
        """The next CRLF-ended line, or None until it is complete."""
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) >= LINE_LIMIT:
                raise StreamError("record line too long")
            return None
        if end + 2 > LINE_LIMIT:
            raise StreamError("record line too long")
        raw = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError("record line is not UTF-8") from None

    def _on_line(self, line: str) -> Iterator[Event]:
        """Advance the record state machine by one line."""
        word, _, rest = line.partition(" ")
        if self._state == "MSG":
            yield self._begin(word, rest)
        elif self._state == "MAIL":
            if word.upper() != "MAIL":
                raise StreamError("MAIL line expected after MSG")
            self._mail, self._rcpts, self._state = line, [], "RCPT"
        elif self._state == "RCPT" and word.upper() == "RCPT":
            self._rcpts.append(line)
        elif self._state == "RCPT":
            if not self._rcpts:
                raise StreamError("RCPT line expected after MAIL")
            yield Envelope(self._mail, tuple(self._rcpts))
            self._state = "PIECE"
            yield from self._piece(word, rest)
        else:
            yield from self._piece(word, rest)

    def _begin(self, word: str, rest: str) -> Begin:
        """MSG transfer-id offset total."""
        fields = rest.split(" ")
        if word != "MSG" or len(fields) != 3 or not valid_transfer_id(fields[0]) \
                or not all(f.isdigit() and len(f) <= 12 for f in fields[1:]):
            raise StreamError("MSG transfer-id offset total expected")
        offset, total = int(fields[1]), int(fields[2])
        if offset > total:
            raise StreamError("MSG offset beyond the message's total")
        self._message_left, self._state = total - offset, "MAIL"
        return Begin(fields[0], offset, total)

    def _piece(self, word: str, rest: str) -> Iterator[Event]:
        """DATA n (a piece follows) or END (the message is complete)."""
        if word == "END" and not rest:
            if self._message_left:
                raise StreamError("END before the message's declared total")
            self._state = "MSG"
            yield End()
            return
        if word != "DATA" or not rest.isdigit() or len(rest) > 12:
            raise StreamError("DATA n or END expected")
        size = int(rest)
        if size > PIECE_LIMIT or size > self._message_left:
            raise StreamError("DATA piece too large or past the declared total")
        self._message_left -= size
        self._data_left = size
        yield from ()
