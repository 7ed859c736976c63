"""A person's secrets for the services around the cluster (WANDB_API_KEY, a data service's
credentials): set once (`podbay secrets set NAME`), given to every workspace and job they
start, on every backend; stored encrypted with the hub's crypt key, never shown back in full,
never in a log or an error message.

The key is JupyterHub's own (JUPYTERHUB_CRYPT_KEY, the first of several, or the chart's
CryptKeeper keys passed on as PODBAY_SECRETS_KEY): podbay derives a Fernet key of its own
from it, so its ciphertexts are not interchangeable with the hub's auth state. Without a key
secrets are refused with a sentence that says how to give one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Float, String, Text, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from .environment import check_env_name
from .quota.database import Base

MAX_VALUE = 8192
MAX_PER_USER = 50


class SecretRow(Base):
    __tablename__ = "podbay_secrets"
    __table_args__ = (UniqueConstraint("user", "name", name="one_value_per_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255))
    ciphertext: Mapped[str] = mapped_column(Text)
    updated: Mapped[float] = mapped_column(Float, default=time.time)


class SecretsUnavailable(Exception):
    """No key to encrypt with, or one that does not open what is stored."""


class SecretRefused(ValueError):
    """A name or value podbay does not take; the message says why (never with the value)."""


def key_from_env(env=os.environ) -> list[str]:
    """The hub's keys, newest first (JupyterHub rotates by putting a new key in front)."""
    raw = env.get("PODBAY_SECRETS_KEY") or env.get("JUPYTERHUB_CRYPT_KEY") or ""
    return [k.strip() for k in raw.replace(",", ";").split(";") if k.strip()]


def _fernet(key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"podbay-secrets:" + key.encode()).digest()))


class SecretStore:
    def __init__(self, book, keys: list[str] | str | None):
        self._write, self._read = book.write_session, book.read_session
        keys = [keys] if isinstance(keys, str) else list(keys or [])
        # Encrypts with the first key, opens with any: a rotated key keeps old secrets readable
        # (and they are written again with the new one when read).
        self._fernet = MultiFernet([_fernet(k) for k in keys]) if keys else None

    def _box(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretsUnavailable("secrets need the hub's crypt key: set JUPYTERHUB_CRYPT_KEY for the hub "
                                     "(openssl rand -hex 32)")
        return self._fernet

    def names(self, user: str) -> list[dict]:
        """Names and when they were set: never the values."""
        with self._read() as s:
            rows = s.execute(select(SecretRow.name, SecretRow.updated).where(SecretRow.user == user)
                             .order_by(SecretRow.name)).all()
        return [{"name": n, "updated": u} for n, u in rows]

    def put(self, user: str, name: str, value: str) -> None:
        try:
            check_env_name(name)
        except ValueError as e:
            raise SecretRefused(str(e)) from None
        if not value:
            raise SecretRefused(f"the value of {name} is empty: remove it instead (podbay secrets rm {name})")
        if len(value.encode()) > MAX_VALUE:
            raise SecretRefused(f"the value of {name} is longer than {MAX_VALUE} bytes")
        if "\0" in value:
            raise SecretRefused(f"the value of {name} contains a NUL character")
        token = self._box().encrypt(value.encode()).decode()
        with self._write() as s, s.begin():
            row = s.scalars(select(SecretRow).where(SecretRow.user == user, SecretRow.name == name)).first()
            if row is None:
                count = len(s.scalars(select(SecretRow.id).where(SecretRow.user == user)).all())
                if count >= MAX_PER_USER:
                    raise SecretRefused(f"you have {count} secrets, the most podbay keeps: remove one first")
                s.add(SecretRow(user=user, name=name, ciphertext=token, updated=time.time()))
            else:
                row.ciphertext, row.updated = token, time.time()

    def remove(self, user: str, name: str) -> bool:
        with self._write() as s, s.begin():
            return s.execute(delete(SecretRow).where(SecretRow.user == user, SecretRow.name == name)).rowcount > 0

    def values(self, user: str) -> dict[str, str]:
        """All of a person's secrets, decrypted, for a workspace or job they start."""
        with self._read() as s:
            rows = s.execute(select(SecretRow.name, SecretRow.ciphertext).where(SecretRow.user == user)).all()
        if not rows:
            return {}
        box = self._box()
        out, unreadable = {}, []
        for name, token in rows:
            try:
                out[name] = box.decrypt(token.encode()).decode()
            except InvalidToken:
                unreadable.append(name)
        if unreadable:
            names = ", ".join(unreadable)
            raise SecretsUnavailable(f"your secrets {names} were stored with a crypt key the hub no longer has: set "
                                     f"them again (podbay secrets set NAME), or give the hub its old key after the "
                                     f"new one (JUPYTERHUB_CRYPT_KEY=new;old)")
        return out
