"""People's SSH public keys (`podbay keys add`), for SSH into their workspaces through the
hub: registered with podbay's service, listed and removed by fingerprint. Only public keys
of the types OpenSSH accepts; a private key pasted by mistake is refused without being kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import unicodedata

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from sqlalchemy import Float, String, Text, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from .quota.database import Base

KEY_TYPES = {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}
MAX_KEYS = 20
# OpenSSH's own floor is 1024 (RequiredRSASize); 2048 is what NIST and every CA ask for.
MIN_RSA_BITS = 2048
# …and OpenSSH's ceiling (SSH_RSA_MAXIMUM_MODULUS_SIZE): a larger key would fail at login.
MAX_RSA_BITS = 16384


class KeyRefused(ValueError):
    """Not a public key podbay takes; the message says why."""


class SshKeyRow(Base):
    __tablename__ = "podbay_ssh_keys"
    __table_args__ = (UniqueConstraint("user", "fingerprint", name="one_key_once"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)
    comment: Mapped[str] = mapped_column(String(255), default="")
    added: Mapped[float] = mapped_column(Float, default=time.time)


def _control(c: str) -> bool:
    return c != "\t" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")


def parse(line: str) -> tuple[str, str, str]:
    """(type and base64 blob as one authorized_keys line, its SHA256 fingerprint, comment)."""
    text = line.strip()
    if "PRIVATE KEY" in text:
        raise KeyRefused("this is a private key: give the public one (the .pub file), and keep this one to yourself")
    if any(_control(c) for c in text):
        # A line break would add a second line to authorized_keys (with options such as
        # command=) that nobody sees listed, counts or can remove.
        raise KeyRefused("a public key is one line: this one has a line break or another control character "
                         "(paste the .pub file's single line)")
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise KeyRefused("not an SSH public key: expected a line like 'ssh-ed25519 AAAA… you@laptop' "
                         f"(types: {', '.join(sorted(KEY_TYPES))})")
    kind, blob = parts[0], parts[1]
    # Read by cryptography as sshd would read it: a type that the data contradicts, a curve
    # point that is not one, an Ed25519 key of the wrong length, a truncated RSA modulus are
    # refused here, not at login.
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise KeyRefused("the key's data is damaged (not the base64 of an SSH key)") from None
    # The data's own first field is its type (cryptography would only say "invalid format").
    inner = raw[4:4 + int.from_bytes(raw[:4], "big")].decode(errors="replace") if len(raw) > 4 else ""
    if inner != kind:
        raise KeyRefused(f"the key says it is {kind} but its data is {inner or 'something else'}")
    try:
        key = load_ssh_public_key(f"{kind} {blob}".encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyRefused(f"the key's data is damaged ({str(e).rstrip('.')})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size > MAX_RSA_BITS:
        raise KeyRefused(f"this RSA key has {key.key_size} bits; sshd refuses more than {MAX_RSA_BITS}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise KeyRefused(f"this RSA key has {key.key_size} bits; podbay takes {MIN_RSA_BITS} or more "
                         "(make an Ed25519 key: ssh-keygen -t ed25519)")
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    comment = parts[2].strip()[:255] if len(parts) > 2 else ""
    return f"{kind} {blob}", fingerprint, comment


class KeyStore:
    def __init__(self, book):
        self._write, self._read = book.write_session, book.read_session

    def add(self, user: str, line: str) -> dict:
        key, fingerprint, comment = parse(line)
        with self._write() as s, s.begin():
            rows = s.scalars(select(SshKeyRow).where(SshKeyRow.user == user)).all()
            if any(r.fingerprint == fingerprint for r in rows):
                raise KeyRefused(f"you have registered this key already ({fingerprint})")
            if len(rows) >= MAX_KEYS:
                raise KeyRefused(f"you have {len(rows)} keys, the most podbay keeps: remove one first")
            row = SshKeyRow(user=user, fingerprint=fingerprint, key=key, comment=comment, added=time.time())
            s.add(row)
        return {"fingerprint": fingerprint, "comment": comment, "type": key.split()[0], "added": row.added}

    def list(self, user: str) -> list[dict]:
        with self._read() as s:
            rows = s.scalars(select(SshKeyRow).where(SshKeyRow.user == user).order_by(SshKeyRow.added)).all()
        return [{"fingerprint": r.fingerprint, "comment": r.comment, "type": r.key.split()[0], "added": r.added}
                for r in rows]

    def remove(self, user: str, fingerprint: str) -> bool:
        with self._write() as s, s.begin():
            return s.execute(delete(SshKeyRow).where(SshKeyRow.user == user,
                                                     SshKeyRow.fingerprint == fingerprint)).rowcount > 0

    def authorized_keys(self, user: str) -> str:
        """The person's keys as an authorized_keys file."""
        with self._read() as s:
            rows = s.scalars(select(SshKeyRow).where(SshKeyRow.user == user).order_by(SshKeyRow.added)).all()
        # One line per key whatever a row holds (one stored before control characters were
        # refused): no comment adds a line.
        return "".join(f"{r.key} {''.join(' ' if _control(c) else c for c in r.comment)}".rstrip() + "\n"
                       for r in rows)
