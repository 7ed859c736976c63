"""SSH public keys (hub/sshkeys.py), made by the real ssh-keygen: the fingerprint podbay shows
is the one OpenSSH prints; private keys and damaged lines are refused."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from podbay.hub.quota import QuotaBook
from podbay.hub.sshkeys import KeyRefused, KeyStore, parse
from tests.harness import require


def keygen(tmp_path, kind: str, bits: list[str] = ()) -> tuple[str, str, str]:
    """(public key line, private key text, OpenSSH's SHA256 fingerprint)."""
    require(shutil.which("ssh-keygen") is not None, "ssh-keygen is not installed")
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", f"alice@{kind}", "-f", str(path)],
                   check=True)
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"], capture_output=True, text=True,
                         check=True).stdout
    return (tmp_path / f"id_{kind}.pub").read_text(), path.read_text(), out.split()[1]


@pytest.mark.parametrize("kind, bits", [("ed25519", []), ("rsa", ["-b", "2048"]), ("ecdsa", ["-b", "256"])])
def test_the_fingerprint_is_openssh_own(tmp_path, kind, bits):
    public, private, fingerprint = keygen(tmp_path, kind, bits)
    key, fp, comment = parse(public)
    assert fp == fingerprint and comment == f"alice@{kind}" and public.startswith(key)
    with pytest.raises(KeyRefused, match="this is a private key"):
        parse(private)


def test_damaged_and_foreign_lines_are_refused(tmp_path):
    public, _, _ = keygen(tmp_path, "ed25519")
    kind, blob, _ = public.split()
    with pytest.raises(KeyRefused, match="not an SSH public key"):
        parse("hello world")
    with pytest.raises(KeyRefused, match="damaged"):
        parse(f"{kind} {blob[:-8]}!!!!")
    with pytest.raises(KeyRefused, match="says it is ssh-rsa but its data is ssh-ed25519"):
        parse(f"ssh-rsa {blob}")


def test_keys_are_per_person_once_each_and_make_an_authorized_keys_file(tmp_path):
    book = QuotaBook(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    store = KeyStore(book)
    public, _, fingerprint = keygen(tmp_path, "ed25519")
    assert store.add("alice", public)["fingerprint"] == fingerprint
    with pytest.raises(KeyRefused, match="registered this key already"):
        store.add("alice", public)
    assert store.list("bob") == [] and [k["fingerprint"] for k in store.list("alice")] == [fingerprint]
    assert store.authorized_keys("alice") == public.strip() + "\n"
    assert store.remove("alice", fingerprint) and store.authorized_keys("alice") == ""
    book.dispose()


def test_a_line_break_or_control_character_in_a_key_is_refused_and_never_makes_a_second_line(tmp_path):
    """A comment with a line break would add a hidden authorized_keys line of its own
    (`command=…` and another key), not listed, not counted, not removable."""
    public, _, _ = keygen(tmp_path, "ed25519")
    kind, blob, _ = public.split()
    for evil in (f"{kind} {blob} laptop\ncommand=\"sh\" {kind} {blob}", f"{kind} {blob} a\rb",
                 f"{kind} {blob} a\x00b", f"{kind} {blob} a\u2028b", f"{kind}\n{blob}"):
        with pytest.raises(KeyRefused, match="one line"):
            parse(evil)
    # A row stored before the refusal existed still makes one line.
    book = QuotaBook(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    store = KeyStore(book)
    store.add("alice", public)
    from sqlalchemy import update

    from podbay.hub.sshkeys import SshKeyRow

    with book.write_session() as s, s.begin():
        s.execute(update(SshKeyRow).values(comment="x\ncommand=\"sh\" ssh-ed25519 AAAA"))
    text = store.authorized_keys("alice")
    assert text.count("\n") == 1 and text.startswith(f"{kind} {blob} x command=")
    book.dispose()


def test_a_key_is_read_as_sshd_would_read_it(tmp_path):
    import base64
    import struct

    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    # Well-formed base64 of the right type, but not a key: an Ed25519 point of 3 bytes.
    short = base64.b64encode(field(b"ssh-ed25519") + field(b"\x01\x02\x03")).decode()
    with pytest.raises(KeyRefused, match="damaged .*32 bytes"):
        parse(f"ssh-ed25519 {short}")
    # A weak RSA key is refused with what to make instead.
    public, _, _ = keygen(tmp_path, "rsa", ["-b", "1024"])
    with pytest.raises(KeyRefused, match="has 1024 bits; podbay takes 2048 or more .*ssh-keygen -t ed25519"):
        parse(public)
