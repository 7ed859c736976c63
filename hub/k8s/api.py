"""Calls to the Kubernetes API that read the answer as plain JSON (what the builders and the
capacity arithmetic work on), with the client's error for an answer that is not a success:
kubernetes_asyncio checks the status only when it deserialises the answer itself."""

from __future__ import annotations

import json


async def read_json(call, *args, **kwargs) -> dict:
    from kubernetes_asyncio.client.exceptions import ApiException

    resp = await call(*args, _preload_content=False, **kwargs)
    body = await resp.read()
    if not 200 <= resp.status <= 299:
        error = ApiException(status=resp.status, reason=resp.reason)
        error.body = body.decode(errors="replace")
        raise error
    return json.loads(body)


async def read_bytes(call, *args, **kwargs) -> bytes:
    from kubernetes_asyncio.client.exceptions import ApiException

    resp = await call(*args, _preload_content=False, **kwargs)
    body = await resp.read()
    if not 200 <= resp.status <= 299:
        error = ApiException(status=resp.status, reason=resp.reason)
        error.body = body.decode(errors="replace")
        raise error
    return body
