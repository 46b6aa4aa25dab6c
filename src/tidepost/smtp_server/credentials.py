"""SMTP AUTH identities: the credentials file, salted hashes, and their domains.

File format (`relay.credentials_file`), one user a line, `#` comments:

    user:scrypt$SALT$HASH[:domain,domain,...[:cram-md5$SECRET]]

The optional last field enables CRAM-MD5 (RFC 2195) for that user, which
RFC 2645 makes the ODMR mechanism and fetchmail's ODMR mode insists on.
CRAM-MD5 needs the password itself on the server: SECRET is the password in
base64, as good as the password to whoever reads the file, so it is opt-in
per user (`tidepost passwd --cram-md5`) and the file must stay mode 0600.

SALT and HASH are unpadded base64; HASH is `hashlib.scrypt(password, salt,
n=2**14, r=8, p=1, dklen=32)`.  The optional domains are the customer
domains this user may ETRN or ATRN (`.example.org` for the domain and its
subdomains); an authenticated user may relay to any domain.
`tidepost passwd USER [DOMAIN...]` prints a line.

In a cluster (`[queue] backend = "postgresql"`) the users are also kept in
the database (queue/directory.py, `tidepost passwd` stores them there):
`Credentials.combined(records, file)` makes one list of both, the
database's user winning over a file line of the same name.

Verification costs about 50 ms of CPU on purpose; callers run it in a
thread (`asyncio.to_thread`).  An unknown user is checked against a dummy
hash, so that timing does not tell which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tidepost.queue.directory import CredentialRecord

log = logging.getLogger("tidepost.smtp_server.credentials")

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32


class CredentialsError(Exception):
    """The credentials file could not be read or has a bad line."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One user of the credentials file."""

    user: str
    hashed: str                  # scrypt$SALT$HASH
    domains: tuple[str, ...] = ()
    cram_secret: bytes = b""     # the password, for CRAM-MD5 only; empty: not enabled


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$SALT$HASH` for `password`, with a fresh random salt."""
    salt = salt if salt is not None else os.urandom(16)
    digest = _scrypt(password, salt)
    return f"{SCHEME}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, hashed: str) -> bool:
    """True when `password` matches `hashed` (constant-time comparison)."""
    try:
        scheme, salt, digest = hashed.split("$")
        if scheme != SCHEME:
            return False
        expected = _unb64(digest)
        actual = _scrypt(password, _unb64(salt))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


# Checked for unknown users so that they cost as much time as known ones.
_DUMMY = f"{SCHEME}${'A' * 22}${'A' * 43}"


class Credentials:
    """The users of a credentials file, by name."""

    def __init__(self, identities: dict[str, Identity]):
        self._identities = identities

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        """Read a credentials file; a bad line raises CredentialsError."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{path}: cannot read: {exc}") from None
        identities = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if line and not line.startswith("#"):
                identity = parse_line(line, f"{path}:{number}")
                identities[identity.user] = identity
        return cls(identities)

    @classmethod
    def combined(cls, records: Sequence[CredentialRecord],
                 file: Credentials | None = None) -> Credentials:
        """The database's users (a cluster's), and the file's users of other names."""
        identities = dict(file._identities) if file is not None else {}
        for record in records:
            if record.user in identities:
                log.warning("AUTH user %s is in the database and in the credentials file; "
                            "the database's entry counts", record.user)
            identities[record.user] = Identity(record.user, record.hashed,
                                               tuple(record.domains), record.cram_secret)
        return cls(identities)

    def records(self) -> list[CredentialRecord]:
        """Every user as a stored record (`tidepost passwd --import`)."""
        return [CredentialRecord(i.user, i.hashed, i.domains, i.cram_secret)
                for _, i in sorted(self._identities.items())]

    def replace(self, other: Credentials) -> None:
        """Take another file's users (SIGHUP), in place for every holder."""
        self._identities = dict(other._identities)

    def __len__(self) -> int:
        return len(self._identities)

    def check(self, user: str, password: str) -> Identity | None:
        """The identity when `password` is right for `user`; None otherwise. Slow."""
        identity = self._identities.get(user)
        ok = verify_password(password, identity.hashed if identity else _DUMMY)
        return identity if identity and ok else None

    def offers_cram_md5(self) -> bool:
        """True when some user has CRAM-MD5 enabled."""
        return any(identity.cram_secret for identity in self._identities.values())

    def check_cram_md5(self, user: str, challenge: bytes, digest: str) -> Identity | None:
        """The identity when `digest` is HMAC-MD5(secret, challenge) in hex (RFC 2195)."""
        identity = self._identities.get(user)
        secret = identity.cram_secret if identity and identity.cram_secret else b"\0"
        expected = hmac.new(secret, challenge, hashlib.md5).hexdigest()
        ok = hmac.compare_digest(expected, digest.strip().lower())
        return identity if identity and identity.cram_secret and ok else None

    def domains_of(self, user: str) -> tuple[str, ...]:
        """The customer domain patterns `user` may ask for."""
        identity = self._identities.get(user)
        return identity.domains if identity else ()


def parse_line(line: str, where: str) -> Identity:
    """One `user:hash[:domains]` line."""
    user, _, rest = line.partition(":")
    hashed, _, rest = rest.partition(":")
    domains, _, cram = rest.partition(":")
    if not user or not hashed.startswith(SCHEME + "$") or hashed.count("$") != 2:
        raise CredentialsError(f"{where}: expected user:scrypt$SALT$HASH[:domain,...]")
    patterns = tuple(d.strip().lower().rstrip(".") for d in domains.split(",") if d.strip())
    return Identity(user, hashed, patterns, _cram_secret(cram, where))


def _cram_secret(field: str, where: str) -> bytes:
    """The CRAM-MD5 secret of a `cram-md5$BASE64` field ('' when absent)."""
    if not field:
        return b""
    scheme, _, secret = field.partition("$")
    try:
        if scheme != "cram-md5" or not secret:
            raise ValueError(field)
        return _unb64(secret)
    except ValueError:
        raise CredentialsError(f"{where}: the last field must be cram-md5$BASE64") from None


def format_line(user: str, password: str, domains: tuple[str, ...] = (),
                cram_md5: bool = False) -> str:
    """A credentials file line for `user` (with a CRAM-MD5 secret if asked)."""
    check_user_name(user)
    line = f"{user}:{hash_password(password)}"
    if cram_md5:
        return f"{line}:{','.join(domains)}:cram-md5${_b64(password.encode('utf-8'))}"
    return f"{line}:{','.join(domains)}" if domains else line


def new_record(user: str, password: str, domains: tuple[str, ...] = (),
               cram_md5: bool = False) -> CredentialRecord:
    """What `tidepost passwd` stores in a cluster's database: the hash, never the password."""
    check_user_name(user)
    patterns = tuple(d.strip().lower().rstrip(".") for d in domains if d.strip())
    return CredentialRecord(user, hash_password(password), patterns,
                            password.encode("utf-8") if cram_md5 else b"")


def check_user_name(user: str) -> None:
    """ValueError unless `user` can be written in the credentials file."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ValueError("a user name has no colon and no white space")


def _scrypt(password: str, salt: bytes) -> bytes:
    """The scrypt key of `password`."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                          p=SCRYPT_P, dklen=KEY_BYTES)


def _b64(data: bytes) -> str:
    """Unpadded standard base64."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    """Decode unpadded base64."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
