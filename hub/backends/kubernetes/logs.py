"""A training job's log as the API serves it, read on by a cursor: "<pod>:<byte offset>" and a
fingerprint of what was read, so that a read after the kubelet rotated the container's log
(the API then serves the new file only) is told from one that reads on."""

from __future__ import annotations

import hashlib

from ...training import BadCursor

ROTATED = b"[podbay: the kubelet rotated this log here; lines written just before may be missing]\n"


def fingerprint(data: bytes, offset: int) -> str:
    """A fingerprint of what was read up to `offset`: the file's first bytes (a rotation
    replaces them; they do not change while the file grows) and those just before `offset`."""
    digest = hashlib.sha256(data[:min(256, offset)] + b"\0" + data[max(0, offset - 64):offset])
    return "f" + digest.hexdigest()[:16]


def cursor_of(pod: str, offset: int, tail: str | None) -> str:
    return f"{pod}:{offset}" + (f":{tail}" if tail and offset else "")


def parse_cursor(cursor: str) -> tuple[str, int, str | None]:
    """`<pod>:<offset>[:f<fingerprint>]` (older cursors have no fingerprint; a pod's name has
    no ':')."""
    parts = cursor.split(":")
    tail = None
    if len(parts) == 3 and len(parts[2]) == 17 and parts[2][0] == "f" and \
            all(c in "0123456789abcdef" for c in parts[2][1:]):
        tail = parts.pop()
    if len(parts) != 2 or not parts[0] or not (parts[1].isascii() and parts[1].isdigit()):
        raise BadCursor(f"{cursor!r} is not a log cursor of this job; start without one")
    return parts[0], int(parts[1]), tail
