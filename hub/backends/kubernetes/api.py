"""Calls to the Kubernetes API that read the answer as plain JSON (what the builders and the
capacity arithmetic work on), with the client's error for an answer that is not a success:
kubernetes_asyncio checks the status only when it deserialises the answer itself."""

from __future__ import annotations

import json
import os


async def read_json(call, *args, **kwargs) -> dict:
    return json.loads(await read_bytes(call, *args, **kwargs))


async def read_bytes(call, *args, **kwargs) -> bytes:
    from kubernetes_asyncio.client.exceptions import ApiException

    resp = await call(*args, _preload_content=False, **kwargs)
    body = await resp.read()
    if not 200 <= resp.status <= 299:
        error = ApiException(status=resp.status, reason=resp.reason)
        error.body = body.decode(errors="replace")
        raise error
    return body


async def api_client(kubeconfig: str | None = None):
    """A client of the cluster podbay runs in (its service account), or of the kubeconfig's
    current context."""
    from kubernetes_asyncio import client, config

    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)
    except config.ConfigException:
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            await config.load_kube_config(config_file=path, client_configuration=conf)
        except (config.ConfigException, OSError) as e:
            raise KubernetesUnreachable(
                f"podbay is not in a cluster and cannot use the kubeconfig {path} ({e}): set "
                "kubernetes.kubeconfig in podbay.yaml, or KUBECONFIG") from None
    return client.ApiClient(conf)


def own_namespace() -> str | None:
    """The namespace of the pod this runs in (its service account's), if it is one."""
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or None
    except OSError:
        return None


class KubernetesUnreachable(RuntimeError):
    """No way to reach the API server; the message says what to set."""


async def sync_user_secret(core, settings, user: str, values: dict[str, str]) -> str | None:
    """The person's Secret as their secrets are now: written whole, or deleted when they have
    none (a removed secret leaves the cluster). Its name, or None."""
    from kubernetes_asyncio.client.exceptions import ApiException

    from .objects import user_secret, user_secret_name

    if values:
        obj = user_secret(settings, user, values)
        await apply_secret(core, obj)
        return obj["metadata"]["name"]
    try:
        await core.delete_namespaced_secret(user_secret_name(settings, user), settings.namespace)
    except ApiException as e:
        if e.status != 404:
            raise
    return None


async def apply_secret(core, obj: dict) -> None:
    """Create the Secret, or replace it whole (keys removed since go too)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    meta = obj["metadata"]
    try:
        await core.create_namespaced_secret(meta["namespace"], obj)
    except ApiException as e:
        if e.status != 409:
            raise
        await core.replace_namespaced_secret(meta["name"], meta["namespace"], obj)


async def follow_pod_addresses(selector: str, namespace: str, into: set[str], interval: float = 15,
                               kubeconfig: str | None = None) -> None:
    """Keep `into` the IPs of the pods `selector` names in `namespace` (the chart's proxy pods,
    whose X-Forwarded-For podbay's service believes): listed again every `interval` seconds,
    the last answer kept while the API server is away."""
    import asyncio
    import logging

    from kubernetes_asyncio import client

    log = logging.getLogger("podbay.k8s")
    api = None
    while True:
        try:
            api = api or await api_client(kubeconfig)
            found = await read_json(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=selector)
            ips = {(p.get("status") or {}).get("podIP") for p in found.get("items") or []
                   if (p.get("status") or {}).get("phase") == "Running"}
            into.clear()
            into.update(ip for ip in ips if ip)
        except Exception as e:  # noqa: BLE001 - the last answer stands until the next one
            log.warning("cannot list the proxy pods (%s in %s): %s", selector, namespace, e)
        await asyncio.sleep(interval)
