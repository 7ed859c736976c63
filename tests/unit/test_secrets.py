"""People's secrets (hub/secrets.py): stored encrypted, names only shown back, refused with
a sentence that never carries the value."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from podbay.hub.quota import QuotaBook
from podbay.hub.secrets import SecretRefused, SecretRow, SecretsUnavailable, SecretStore, key_from_env


@pytest.fixture
def book(tmp_path):
    b = QuotaBook(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield b
    b.dispose()


def test_secrets_are_encrypted_and_only_their_names_listed(book):
    store = SecretStore(book, "a" * 64)
    store.put("alice", "WANDB_API_KEY", "k-123")
    store.put("alice", "WANDB_API_KEY", "k-456")  # set again: replaced
    store.put("bob", "S3_KEY", "b")
    with book.read_session() as s:
        stored = s.scalars(select(SecretRow.ciphertext)).all()
    assert stored and not any("k-456" in c or "k-123" in c for c in stored)
    assert [n["name"] for n in store.names("alice")] == ["WANDB_API_KEY"]
    assert store.values("alice") == {"WANDB_API_KEY": "k-456"} and store.values("bob") == {"S3_KEY": "b"}
    assert store.remove("alice", "WANDB_API_KEY") and not store.remove("alice", "WANDB_API_KEY")
    assert store.values("alice") == {}


@pytest.mark.parametrize("name, value, words", [
    ("PODBAY_TEAM", "secret-value", "set by podbay"),
    ("CUDA_VISIBLE_DEVICES", "secret-value", "set by podbay"),
    ("not a name", "secret-value", "not an environment variable name"),
    ("EMPTY", "", "is empty"),
    ("BIG", "x" * 9000, "longer than 8192 bytes"),
])
def test_refusals_say_why_without_the_value(book, name, value, words):
    with pytest.raises(SecretRefused) as e:
        SecretStore(book, "k").put("alice", name, value)
    assert words in str(e.value) and "secret-value" not in str(e.value)


def test_without_the_key_or_with_another_one_it_says_what_to_do(book):
    with pytest.raises(SecretsUnavailable, match="set JUPYTERHUB_CRYPT_KEY"):
        SecretStore(book, None).put("alice", "A", "1")
    SecretStore(book, "one-key").put("alice", "A", "1")
    assert SecretStore(book, None).values("bob") == {}, "someone with no secrets needs no key"
    with pytest.raises(SecretsUnavailable, match="set them again"):
        SecretStore(book, "another-key").values("alice")


def test_the_keys_are_the_hubs_and_a_rotated_one_still_opens_old_secrets(book):
    assert key_from_env({"JUPYTERHUB_CRYPT_KEY": "k1;k2"}) == ["k1", "k2"]
    assert key_from_env({"PODBAY_SECRETS_KEY": "p", "JUPYTERHUB_CRYPT_KEY": "k"}) == ["p"]
    assert key_from_env({}) == []
    SecretStore(book, ["old"]).put("alice", "A", "1")
    # JupyterHub rotates by putting the new key first: old secrets open, new ones use the new key.
    rotated = SecretStore(book, ["new", "old"])
    assert rotated.values("alice") == {"A": "1"}
    rotated.put("alice", "B", "2")
    with pytest.raises(SecretsUnavailable, match="your secrets A were stored with a crypt key the hub no longer"):
        SecretStore(book, ["new"]).values("alice")
