"""A realistic, generated mix of mail for benchmarks and tests (no downloads).

`message_mix(count, seed, mix)` returns `count` (kind, bytes) messages,
deterministic for a seed.  Kinds, with the shares of the "text" mix (the
office and ship mail the compressed mode is for) and of the "attachments"
mix:

- `plain` (text 65%, attachments 30%): a plain-text note of 15-60 lines of
  sentences built from a business/maritime vocabulary, quoted replies
  and a signature, headers as a real MUA writes them (Received lines,
  Message-ID, Date, MIME-Version, Content-Type).
- `html` (text 32%, attachments 30%): multipart/alternative, the text part
  and an HTML part of the same words with markup (as mail clients send).
- `jpeg` (text 2%, attachments 20%): a short note with a 30-120 KB
  attachment of random octets, base64-encoded: already-compressed data
  (a photo) that no compressor can shrink below its entropy, so the
  ratio stays honest.
- `pdf` (text 1%, attachments 20%): like `jpeg`, 20-80 KB of a PDF-like
  body: some plain PDF syntax around random (deflated-stream-like) octets.

Random data comes from `random.Random(seed)`, so runs compare.
"""

from __future__ import annotations

import base64
import random

MIXES = {
    "text": {"plain": 65, "html": 32, "jpeg": 2, "pdf": 1},
    "attachments": {"plain": 30, "html": 30, "jpeg": 20, "pdf": 20},
}

_WORDS = ("the vessel position report weather forecast crew change port agent cargo "
          "manifest invoice schedule arrival departure fuel bunkering spare parts order "
          "engine maintenance inspection certificate customs clearance please find attached "
          "regards thank you for your message we confirm receipt kindly advise the master "
          "chief engineer owners charterers office meeting tomorrow morning update budget "
          "monthly figures delay expected berth pilot anchorage draft ballast water "
          "provisions medical supplies satellite connection is slow today as usual").split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + "."


def _paragraphs(rng: random.Random, lines: int) -> list[str]:
    """Lines of text, wrapped under 78 characters, in paragraphs."""
    out: list[str] = []
    while len(out) < lines:
        text = " ".join(_sentence(rng) for _ in range(rng.randint(2, 5)))
        line = ""
        for word in text.split():
            if len(line) + len(word) + 1 > 72:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        out += [line, ""]
    return out


def _headers(rng: random.Random, number: int, content_type: str) -> list[str]:
    sender = rng.choice(("master", "chief", "purser", "agent", "office"))
    return [
        f"Received: from workstation{rng.randint(1, 9)}.lan.site.test (10.1.0.{rng.randint(2, 250)})",
        f"\tby site.test with ESMTP; Mon, 1 Dec 2026 {rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:00 +0000",
        f"From: {sender.capitalize()} <{sender}@site.test>",
        f"To: Operations <ops{number % 7}@remote.test>",
        f"Subject: {' '.join(rng.choice(_WORDS) for _ in range(rng.randint(3, 7)))}",
        f"Date: Mon, 1 Dec 2026 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00 +0000",
        f"Message-ID: <{rng.getrandbits(64):016x}.{number}@site.test>",
        "MIME-Version: 1.0",
        "User-Agent: Thunderbird/115.0",
        content_type,
    ]


def _plain(rng: random.Random, number: int) -> list[str]:
    body = _paragraphs(rng, rng.randint(15, 60))
    quoted = ["> " + line for line in _paragraphs(rng, rng.randint(0, 20))]
    return (_headers(rng, number, "Content-Type: text/plain; charset=utf-8; format=flowed")
            + ["Content-Transfer-Encoding: 7bit", ""] + body + quoted
            + ["-- ", "Operations, MV Tidepost", "Sent over satellite: please keep replies short"])


def _html(rng: random.Random, number: int) -> list[str]:
    text = _paragraphs(rng, rng.randint(15, 50))
    boundary = f"------------{rng.getrandbits(48):012x}"
    html = ["<html><head><meta http-equiv=\"content-type\" content=\"text/html; "
            "charset=UTF-8\"></head><body>"]
    html += [f"<p style=\"font-family: Arial, sans-serif; font-size: 10pt\">{line}</p>"
             if line else "<br>" for line in text]
    html += ["</body></html>"]
    return (_headers(rng, number, f"Content-Type: multipart/alternative; boundary=\"{boundary}\"")
            + ["", "This is a multi-part message in MIME format.", f"--{boundary}",
               "Content-Type: text/plain; charset=UTF-8; format=flowed",
               "Content-Transfer-Encoding: 7bit", "", *text, f"--{boundary}",
               "Content-Type: text/html; charset=UTF-8", "Content-Transfer-Encoding: 7bit", "",
               *html, f"--{boundary}--"])


def _attached(rng: random.Random, number: int, name: str, mime: str, data: bytes) -> list[str]:
    boundary = f"------------{rng.getrandbits(48):012x}"
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    return (_headers(rng, number, f"Content-Type: multipart/mixed; boundary=\"{boundary}\"")
            + ["", f"--{boundary}", "Content-Type: text/plain; charset=UTF-8", "",
               *_paragraphs(rng, rng.randint(3, 8)), f"--{boundary}",
               f"Content-Type: {mime}; name=\"{name}\"", "Content-Transfer-Encoding: base64",
               f"Content-Disposition: attachment; filename=\"{name}\"", "", *lines,
               f"--{boundary}--"])


def _jpeg(rng: random.Random, number: int) -> list[str]:
    data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(rng.randint(30_000, 120_000))
    return _attached(rng, number, f"deck{number}.jpg", "image/jpeg", data + b"\xff\xd9")


def _pdf(rng: random.Random, number: int) -> list[str]:
    stream = rng.randbytes(rng.randint(20_000, 80_000))
    data = (b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            + b"3 0 obj << /Length %d /Filter /FlateDecode >> stream\n" % len(stream)
            + stream + b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    return _attached(rng, number, f"report{number}.pdf", "application/pdf", data)


_MAKERS = {"plain": _plain, "html": _html, "jpeg": _jpeg, "pdf": _pdf}


def message_mix(count: int, seed: int = 1, mix: str = "text") -> list[tuple[str, bytes]]:
    """`count` (kind, message) pairs, CRLF line endings, deterministic for `seed`."""
    rng = random.Random(seed)
    shares = MIXES[mix]
    kinds = rng.choices(list(shares), weights=list(shares.values()), k=count)
    return [(kind, ("\r\n".join(_MAKERS[kind](rng, number)) + "\r\n").encode("utf-8"))
            for number, kind in enumerate(kinds)]
